"""Parity with mergekit 0.1.5: per tensor in-process, and end to end on tiny checkpoints.

Skipped as a whole where mergekit is not installed. Install it next to raymerge, keeping torch:
``pip install "mergekit==0.1.5" "torch==2.13.0"`` (adds only new packages: accelerate, datasets,
dill, immutables, multiprocess, pandas, peft, psutil, scipy, sentencepiece).

* In-process: mergekit's method objects (``tests.mergekit_ref.mergekit_merge``) and raymerge's
  ``merge_whole`` get the same random fp32 tensors and the same fully resolved parameters
  (defaults filled from raymerge's specs, whose defaults are themselves checked against
  mergekit's); results must agree to 1e-6. Randomised methods (DARE, DELLA) are compared at
  density 1, where they are deterministic; a few seed/statistics properties cover the rest.
* End to end (``integration``): one YAML, run by ``mergekit-yaml`` and by ``raymerge run`` in
  subprocesses, outputs compared tensor by tensor. This also covers parameter resolution
  (filters, gradients over layers) which the in-process tests bypass.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zlib
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.testing import assert_close

from tests.mergekit_ref import mergekit_defaults, mergekit_merge

mergekit = pytest.importorskip("mergekit")

ATOL = 1e-6
SHAPES = [(64, 48), (17,), (3, 5, 7)]


# --------------------------------------------------------------------------- helpers


def _raymerge_method(name: str):
    from raymerge.methods import get_method

    return get_method(name)


def resolve(
    name: str, n_models: int, per_model: list[dict[str, Any]] | None, wide: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fully resolved (model_params, params) for ``name`` from raymerge's parameter specs.

    A per-model value wins over a method-wide value of the same name (mergekit's precedence),
    then the spec default. Values raymerge does not declare fail the test: raymerge would reject
    such a config, while mergekit accepts it.
    """
    specs = _raymerge_method(name).params
    known = {s.name for s in specs}
    per_model = per_model or [{} for _ in range(n_models)]
    assert len(per_model) == n_models
    unknown = (set(wide) | {k for p in per_model for k in p}) - known
    if unknown:
        pytest.fail(f"raymerge {name} does not declare parameter(s) {sorted(unknown)}")
    params: dict[str, Any] = {}
    model_params: list[dict[str, Any]] = [{} for _ in range(n_models)]
    for s in specs:
        if s.scope == "global":
            params[s.name] = wide.get(s.name, s.default)
            if params[s.name] is None and getattr(s, "required", False):
                pytest.fail(f"test case sets no value for required {name}.{s.name}")
            continue
        for i in range(n_models):
            v = per_model[i].get(s.name, wide.get(s.name, s.default))
            if v is None and getattr(s, "required", False):
                pytest.fail(f"test case sets no value for required {name}.{s.name}")
            model_params[i][s.name] = v
    return model_params, params


def inputs(shape, n_models: int, *, seed: int = 0, spread: float = 0.1):
    """base and fine-tunes (base + spread * noise), fp32."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + spread * torch.randn(shape, generator=g) for _ in range(n_models)]


def both(name, base, xs, model_params, params, **kw):
    """(mergekit, raymerge) results for one tensor; asserts raymerge left its inputs alone."""
    from raymerge.methods import merge_whole

    expected = mergekit_merge(name, base, [x.clone() for x in xs], model_params, params)
    keep = (None if base is None else base.clone(), [x.clone() for x in xs])
    got = merge_whole(name, base, xs, model_params, params, **kw)
    if base is not None:
        assert torch.equal(base, keep[0]), "merge_whole modified base"
    assert all(torch.equal(a, b) for a, b in zip(xs, keep[1])), "merge_whole modified inputs"
    return expected, got


def check(name, base, xs, model_params, params):
    expected, got = both(name, base, xs, model_params, params)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert_close(got, expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- defaults

METHODS = [
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "model_stock",
]
# mergekit parameters that cannot change a result, so raymerge need not declare them.
# int8_mask only changes the dtype of an intermediate sign tensor (the mask is boolean either
# way); without sparsification (task_arithmetic) density and rescale are never read.
NO_EFFECT = {"int8_mask"}
NO_EFFECT_UNSPARSIFIED = {"density", "rescale"}


@pytest.mark.parametrize("name", METHODS)
def test_parameter_specs_match_mergekit(name):
    mk = mergekit_defaults(name)
    rm = _raymerge_method(name)
    for s in rm.params:
        assert s.name in mk, f"{name}.{s.name}: not a mergekit parameter"
        scope, default = mk[s.name]
        assert s.scope == scope, f"{name}.{s.name}: scope {s.scope}, mergekit {scope}"
        required = getattr(s, "required", s.default is None)
        assert required == (default is None), f"{name}.{s.name}: required differs from mergekit"
        if default is not None:
            assert s.default == default and type(s.default) is type(default), (
                f"{name}.{s.name}: default {s.default!r}, mergekit {default!r}"
            )
    ignorable = NO_EFFECT | (NO_EFFECT_UNSPARSIFIED if name == "task_arithmetic" else set())
    missing = set(mk) - {s.name for s in rm.params} - ignorable
    assert not missing, f"{name}: mergekit parameters raymerge rejects: {sorted(missing)}"


# --------------------------------------------------------------------------- in-process parity

# (method, n_models, per-model params or None, method-wide params)
CASES = [
    ("linear", 3, [{"weight": 0.3}, {"weight": 0.5}, {"weight": 1.2}], {}),
    ("linear", 3, [{"weight": 0.3}, {"weight": 0.5}, {"weight": 1.2}], {"normalize": False}),
    ("linear", 3, [{"weight": 1.0}, {"weight": -0.5}, {"weight": 0.8}], {"normalize": True}),
    ("task_arithmetic", 3, [{"weight": 0.7}, {"weight": 0.3}, {"weight": 1.1}], {}),
    ("task_arithmetic", 3, None, {"weight": 0.6, "normalize": True}),
    ("task_arithmetic", 2, [{"weight": 0.7}, {"weight": 0.3}], {"lambda": 0.5}),
    ("task_arithmetic", 2, [{"weight": 1.0}, {"weight": -1.0}], {"normalize": True}),
]
TIES_MODELS = [{"weight": 1.0, "density": 0.3}, {"weight": 0.6, "density": 0.7}]
for _norm in (True, False):
    for _lam in (1.0, 0.5):
        CASES.append(("ties", 2, TIES_MODELS, {"normalize": _norm, "lambda": _lam}))
CASES += [
    ("ties", 2, TIES_MODELS, {"rescale": True}),
    ("ties", 2, TIES_MODELS, {"int8_mask": True, "lambda": 0.5}),
    ("ties", 3, None, {"weight": 0.5, "density": 0.01}),  # k = max(1, int(d * n)) on (17,)
    ("ties", 2, [{"weight": 1.0}, {"weight": 0.5}], {}),  # density 1: sign election only
]
for _m in ("breadcrumbs", "breadcrumbs_ties"):
    _bc = [{"weight": 1.0, "density": 0.6, "gamma": 0.05}, {"weight": 0.5}]
    CASES += [
        (_m, 2, _bc, {"density": 0.6, "gamma": 0.05}),
        (_m, 2, _bc, {"density": 0.6, "gamma": 0.05, "normalize": True, "lambda": 0.5}),
        (_m, 2, _bc, {"density": 0.6, "gamma": 0.05, "rescale": True}),
        (_m, 2, None, {"weight": 0.7, "density": 0.98, "gamma": 0.05}),  # density + gamma > 1
        (_m, 2, None, {"weight": 0.7, "density": 0.01, "gamma": 0.01}),  # may keep nothing
    ]
# Randomised methods are deterministic at density 1 (no drop): consensus and normalisation only.
for _m in ("dare_ties", "dare_linear", "della", "della_linear"):
    CASES.append((_m, 3, [{"weight": 0.7}, {"weight": 0.4}, {"weight": 1.0}], {"density": 1.0}))
for _t in (0.0, 0.3, 1.0):
    CASES.append(("slerp", 1, None, {"t": _t}))
CASES += [
    ("model_stock", 3, None, {}),
    ("model_stock", 3, None, {"filter_wise": True}),
    ("model_stock", 2, None, {}),
]


BASELESS = {"linear"}  # mergekit's linear ignores base_model: only the listed models count


def _case_id(case):
    name, n, per, wide = case
    bits = [name, f"n{n}"]
    if per:
        bits.append("/".join(",".join(f"{k}={v}" for k, v in p.items()) or "_" for p in per))
    bits += [f"{k}={v}" for k, v in wide.items()]
    return "-".join(bits)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_mergekit(case, shape):
    name, n, per, wide = case
    base, xs = inputs(shape, n, seed=zlib.crc32(repr((name, n, shape)).encode()))
    model_params, params = resolve(name, n, per, wide)
    check(name, None if name in BASELESS else base, xs, model_params, params)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ties_with_unrelated_models_matches_mergekit(shape):
    """Independent tensors (not base + small noise): many sign conflicts, large deltas."""
    g = torch.Generator().manual_seed(7)
    base, *xs = (torch.randn(shape, generator=g) for _ in range(4))
    per = [{"weight": 1.0, "density": 0.3}, {"weight": 0.6, "density": 0.7}, {"weight": 0.8}]
    model_params, params = resolve("ties", 3, per, {"lambda": 0.5})
    check("ties", base, xs, model_params, params)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_nearly_collinear_matches_mergekit(t):
    """|cos| > 0.9995: mergekit falls back to linear interpolation."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 48, generator=g)
    b = 2.0 * a + 1e-3 * torch.randn(64, 48, generator=g)
    model_params, params = resolve("slerp", 1, None, {"t": t})
    check("slerp", a, [b], model_params, params)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_opposed_updates_matches_mergekit(filter_wise):
    """Two opposite task vectors: cos = -1, mergekit's singular-denominator branch keeps base."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(8, 6, generator=g)
    d = torch.randn(8, 6, generator=g)
    model_params, params = resolve("model_stock", 2, None, {"filter_wise": filter_wise})
    check("model_stock", base, [base + d, base - d], model_params, params)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_are_seeded(name):
    from raymerge.methods import merge_whole

    base, xs = inputs((64, 48), 2, seed=11)
    model_params, params = resolve(name, 2, None, {"weight": 0.5, "density": 0.5})
    a = merge_whole(name, base, xs, model_params, params, seed=1)
    b = merge_whole(name, base, xs, model_params, params, seed=1)
    c = merge_whole(name, base, xs, model_params, params, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["dare_linear", "della_linear"])
@pytest.mark.parametrize("rescale", [False, True])
def test_random_drop_keeps_density_and_rescales_l1(name, rescale):
    """One model, weight 1: about ``density`` of the delta survives, and with ``rescale`` its L1
    norm is restored exactly (mergekit's RescaleNorm.l1), as in mergekit."""
    from raymerge.methods import merge_whole

    base, (x,) = inputs((200, 200), 1, seed=13)
    delta = x - base
    model_params, params = resolve(
        name, 1, None, {"weight": 1.0, "density": 0.4, "rescale": rescale}
    )
    out = merge_whole(name, base, [x], model_params, params, seed=3)
    kept = out - base
    nz = (kept.abs() > 1e-12).float().mean().item()
    assert abs(nz - 0.4) < 0.02, nz
    if rescale:
        assert_close(kept.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=0)
    else:
        mask = kept.abs() > 1e-12
        assert_close(kept[mask], delta[mask], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- end to end

FLAGS_MERGEKIT = [
    "--no-copy-tokenizer",  # the synthetic models have no tokenizer files
    "--no-write-model-card",  # the card looks references up on the Hugging Face Hub
    "--no-lazy-unpickle",
    "--device",
    "cpu",
    "--random-seed",
    "0",
    "--quiet",
]


def _e2e_configs(fam: dict[str, str]) -> dict[str, dict[str, Any]]:
    base, ft1, ft2 = fam["base"], fam["ft1"], fam["ft2"]
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": base, "parameters": {"weight": 0.2}},
                {"model": ft1, "parameters": {"weight": [0.3, 0.9]}},
                {"model": ft2, "parameters": {"weight": 0.5}},
            ],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 0.7}},
                {"model": ft2, "parameters": {"weight": [0.2, 0.8, 0.4]}},
            ],
            "parameters": {"lambda": 0.9, "normalize": True},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {
                    "model": ft1,
                    "parameters": {
                        "weight": [
                            {"filter": "self_attn", "value": [0.2, 0.9]},
                            {"filter": "mlp", "value": 0.5},
                            {"value": 0.7},
                        ],
                        "density": 0.5,
                    },
                },
                {"model": ft2, "parameters": {"weight": 0.6, "density": [0.3, 0.8]}},
            ],
            "parameters": {"normalize": True, "lambda": 0.9},
        },
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 0.8, "density": 0.6, "gamma": 0.05}},
                {"model": ft2, "parameters": {"weight": [0.3, 0.7], "density": [0.5, 0.9]}},
            ],
            "parameters": {"gamma": 0.02},
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": fam["far"]}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"value": 0.5},
                ]
            },
        },
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}],
        },
    }


E2E = ["linear", "task_arithmetic", "ties", "breadcrumbs_ties", "slerp", "model_stock"]


def _family(root: str, layers: int) -> dict[str, str]:
    from raymerge.synth import llama_config, make_family

    cfg = llama_config(hidden=64, intermediate=172, layers=layers, vocab=256, heads=4, kv_heads=2)
    paths = make_family(root, 2, cfg=cfg, n_shards=2, dtype=torch.float32)
    # The fine-tunes are within cos > 0.9995 of the base, where slerp degenerates to lerp; a
    # far one (same base, seed 0) keeps slerp on its spherical branch.
    far = make_family(
        os.path.join(root, "far"), 1, cfg=cfg, noise=0.3, n_shards=2, dtype=torch.float32
    )
    paths.append(far[1])
    return dict(zip(["base", "ft1", "ft2", "far"], [os.path.abspath(p) for p in paths]))


@pytest.fixture(scope="module")
def fp32_family(tmp_path_factory) -> dict[str, str]:
    return _family(str(tmp_path_factory.mktemp("parity-family")), layers=3)


@pytest.fixture(scope="module")
def one_layer_family(tmp_path_factory) -> dict[str, str]:
    return _family(str(tmp_path_factory.mktemp("parity-family-1l")), layers=1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # raymerge starts its own local Ray
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    return env


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )


def _load(folder: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        out.update(load_file(f))
    assert out, f"no safetensors in {folder}"
    return out


def _e2e_run(config: dict[str, Any], tmp_path) -> tuple[dict, dict]:
    """(mergekit's, raymerge's) tensors of one fp32 merge, after checking both wrote the same
    names, shapes and dtypes."""
    config = {**config, "dtype": "float32"}
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    mk_out, rm_out = tmp_path / "mergekit", tmp_path / "raymerge"
    _run(
        [
            sys.executable,
            "-m",
            "mergekit.scripts.run_yaml",
            str(path),
            str(mk_out),
            *FLAGS_MERGEKIT,
        ],
        "mergekit-yaml",
    )
    _run(
        [sys.executable, "-m", "raymerge", "run", str(path), str(rm_out), "--no-progress"],
        "raymerge run",
    )
    expected, got = _load(str(mk_out)), _load(str(rm_out))
    assert sorted(got) == sorted(expected)
    for k in expected:
        assert got[k].shape == expected[k].shape and got[k].dtype == expected[k].dtype, k
    return expected, got


def _e2e(config: dict[str, Any], tmp_path) -> None:
    expected, got = _e2e_run(config, tmp_path)
    diffs = sorted((((got[k] - expected[k]).abs().max().item(), k) for k in expected), reverse=True)
    bad = [f"{k}: max abs diff {d:.3g}" for d, k in diffs if not d <= ATOL]
    assert not bad, f"{len(bad)}/{len(diffs)} tensors differ from mergekit:\n" + "\n".join(bad[:12])


@pytest.mark.integration
@pytest.mark.parametrize("name", E2E)
def test_end_to_end_matches_mergekit_yaml(name, fp32_family, tmp_path):
    _e2e(_e2e_configs(fp32_family)[name], tmp_path)


@pytest.mark.integration
def test_end_to_end_gradient_on_a_single_layer_model(one_layer_family, tmp_path):
    """mergekit evaluates gradients at t = 1 for the layer of a one-layer slice (t = 0 for
    embeddings, final norm and lm_head): ft2's weight [0.2, 0.8] is 0.8 in layer 0."""
    cfg = _e2e_configs(one_layer_family)["task_arithmetic"]
    cfg["models"][1]["parameters"]["weight"] = [0.2, 0.8]
    _e2e(cfg, tmp_path)
