"""Parity with mergekit 0.1.5 of nuslerp, multislerp, karcher, sce, arcee_fusion, nearswap, ram
and ramplus_tl, in fp32: per tensor in-process, and end to end through ``mergekit-yaml``.

Same harness as :mod:`tests.integration.test_parity`. nearswap, ram, ramplus_tl and
arcee_fusion do mergekit's element operations one for one, so they must match **bit for bit**;
the others compute their whole-tensor statistics in float64 where mergekit uses fp32, and must
agree to 1e-6 (measured: a few fp32 ulps). arcee_fusion on tensors over 10^6 elements is where
mergekit samples its quartiles from torch's global RNG: there the kept sets are compared
statistically.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from tests.integration.test_parity import (
    ATOL,
    SHAPES,
    _case_id,
    _e2e_run,
    _family,
    both,
    check,
    inputs,
    resolve,
)
from tests.mergekit_ref import mergekit_defaults, mergekit_merge, mergekit_method

mergekit = pytest.importorskip("mergekit")

METHODS = [
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
    "arcee_fusion",
    "nearswap",
    "ram",
    "ramplus_tl",
]
EXACT = {"arcee_fusion", "nearswap", "ram", "ramplus_tl"}
NO_EFFECT = {"int8_mask"}  # accepted by raymerge too, but it changes no number
BASE_POLICY = {"required": "required", "optional": "optional", "input": "ignored"}


@pytest.mark.parametrize("name", METHODS)
def test_parameter_specs_and_inputs_match_mergekit(name):
    from raymerge.methods import get_method

    mk, rm = mergekit_defaults(name), get_method(name)
    assert {s.name for s in rm.params} == set(mk)
    for s in rm.params:
        scope, default = mk[s.name]
        assert s.scope == scope, f"{name}.{s.name}: scope {s.scope}, mergekit {scope}"
        assert s.required == (default is None), f"{name}.{s.name}: required differs"
        if default is not None:
            assert s.default == default and type(s.default) is type(default), s.name
    contract = mergekit_method(name).spec.contract
    assert BASE_POLICY[rm.base] == contract.base.value
    lo, hi = rm.inputs
    with_base = 1 if rm.base == "required" else 0
    if contract.min_non_base is not None:
        assert (lo, hi) == (contract.min_non_base, contract.max_non_base)
    else:  # mergekit counts the base among its inputs
        assert lo + with_base == max(contract.min_inputs, with_base)
        assert (hi + with_base if hi is not None else None) == contract.max_inputs


W3 = [{"weight": 0.6}, {"weight": 0.4}, {"weight": 1.3}]
W2 = W3[:2]
# (method, n_models, per-model params or None, method-wide params, with a base model)
CASES: list[tuple[str, int, Any, dict[str, Any], bool]] = [
    ("nuslerp", 2, W2, {}, True),
    ("nuslerp", 2, W2, {}, False),
    ("nuslerp", 2, W2, {"nuslerp_flatten": False}, True),
    ("nuslerp", 2, W2, {"nuslerp_flatten": False}, False),
    ("nuslerp", 2, W2, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, True),
    ("nuslerp", 2, W2, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, False),
    ("nuslerp", 2, [{"weight": 2.0}, {"weight": -0.5}], {}, True),  # t = -1/3: extrapolates
    ("multislerp", 3, W3, {}, True),
    ("multislerp", 3, W3, {}, False),
    ("multislerp", 2, W2, {"normalize_weights": False}, True),
    ("multislerp", 1, W2[:1], {}, True),
    ("multislerp", 3, W3, {"eps": 0.1}, True),  # mergekit's exponential map scales by cos(eps)
    ("multislerp", 2, W2, {"eps": 0.5}, False),
    ("karcher", 3, None, {}, False),
    ("karcher", 2, None, {"max_iter": 1}, False),
    ("karcher", 4, None, {"max_iter": 50, "tol": 1e-7}, False),
    ("sce", 3, None, {}, True),
    ("sce", 3, None, {"select_topk": 0.3}, True),
    ("sce", 2, None, {"select_topk": 0.9, "int8_mask": True}, True),
    ("sce", 1, None, {"select_topk": 0.5}, True),
    ("arcee_fusion", 1, None, {}, True),
    ("nearswap", 1, None, {"t": 0.05}, True),
    ("nearswap", 1, None, {"t": 1e-4}, True),
    ("ram", 3, None, {"epsilon": 0.05}, True),
    ("ram", 2, None, {}, True),
    ("ramplus_tl", 3, None, {"epsilon": 0.05}, True),
    ("ramplus_tl", 3, None, {"epsilon": 0.1, "r": 0.5, "alpha": 2.0}, True),
]


def compare(name, base, xs, model_params, params):
    """Exact for EXACT methods, else within ATOL; returns the max abs difference."""
    if name in EXACT:
        expected, got = both(name, base, xs, model_params, params)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
        return 0.0
    check(name, base, xs, model_params, params)
    expected, got = both(name, base, xs, model_params, params)
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c[:4]) + f"-base{c[4]}" for c in CASES])
def test_matches_mergekit(case, shape):
    name, n, per, wide, with_base = case
    base, xs = inputs(shape, n, seed=zlib.crc32(repr((name, n, shape)).encode()))
    model_params, params = resolve(name, n, per, wide)
    compare(name, base if with_base else None, xs, model_params, params)


@pytest.mark.parametrize("name", ["nuslerp", "multislerp", "karcher", "sce", "ram", "ramplus_tl"])
def test_unrelated_models_match_mergekit(name):
    """Independent tensors: large angles (karcher iterates several steps, nuslerp and
    multislerp are far from linear), many sign conflicts and overlaps."""
    g = torch.Generator().manual_seed(21)
    n = 2 if name == "nuslerp" else 3
    base, *xs = (torch.randn(40, 24, generator=g) for _ in range(n + 1))
    per = W3[:n] if name in ("nuslerp", "multislerp") else None
    wide = {"select_topk": 0.4} if name == "sce" else {"epsilon": 0.5} if "ram" in name else {}
    model_params, params = resolve(name, n, per, wide)
    compare(name, None if name == "karcher" else base, xs, model_params, params)


def test_edge_cases_match_mergekit():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(16, 8, generator=g)
    other = base + torch.randn(16, 8, generator=g)
    mp, p = resolve("nuslerp", 2, W2, {})
    check("nuslerp", base, [base.clone(), other], mp, p)  # a zero task vector
    check("nuslerp", base, [other, base + 2 * (other - base)], mp, p)  # colinear
    mp, p = resolve("multislerp", 2, W2[:1] * 2, {})
    zero = torch.zeros_like(base)
    check("multislerp", zero, [other, -other], mp, p)  # exactly antipodal: linear fallback
    mp, p = resolve("karcher", 3, None, {})
    check("karcher", None, [torch.zeros(16, 8), base, other], mp, p)  # a zero input
    mp, p = resolve("ramplus_tl", 2, None, {"epsilon": 0.5, "alpha": 5.0})
    lone = base.clone()
    lone[0, 0] += 3.0  # one unique element, no shared ones: rho 0
    compare("ramplus_tl", base, [lone, other], mp, p)
    mp, p = resolve("sce", 2, None, {})
    tiny = [base + 1e-4 * torch.randn(16, 8, generator=g) for _ in range(2)]
    check("sce", base, tiny, mp, p)  # uniform weights (sum of mean squares < 1e-6)


def test_arcee_fusion_on_big_tensors_matches_mergekit_statistically():
    """Over 10^6 elements mergekit takes its quartiles from 10^6 elements drawn with
    replacement (torch's global RNG); raymerge uses the exact quartiles. The thresholds are
    close, so the kept sets nearly coincide."""
    from raymerge.methods import merge_whole

    g = torch.Generator().manual_seed(8)
    base = torch.randn(1500, 1000, generator=g)
    other = base + 0.1 * torch.randn(1500, 1000, generator=g)
    expected = mergekit_merge("arcee_fusion", base, [other], [{}], {}, seed=0)
    got = merge_whole("arcee_fusion", base, [other], [{}], {})
    kept_mk, kept_rm = expected != base, got != base
    frac_mk, frac_rm = kept_mk.float().mean().item(), kept_rm.float().mean().item()
    assert 0.01 < frac_rm < 0.5
    assert abs(frac_mk - frac_rm) < 0.002, (frac_mk, frac_rm)
    assert (kept_mk ^ kept_rm).float().mean().item() < 0.002
    agree = ~(kept_mk ^ kept_rm)
    assert torch.equal(got[agree], expected[agree])  # where both keep (or drop): the same


# --------------------------------------------------------------------------- end to end


def _configs(fam: dict[str, str]) -> dict[str, dict[str, Any]]:
    base, ft1, ft2, far = fam["base"], fam["ft1"], fam["ft2"], fam["far"]
    weights = [
        {"model": ft1, "parameters": {"weight": [0.3, 0.8]}},
        {"model": far, "parameters": {"weight": 0.5}},
    ]
    return {
        "nuslerp": {"merge_method": "nuslerp", "models": weights},
        "nuslerp_rows_base": {
            "merge_method": "nuslerp",
            "base_model": base,
            "models": weights,
            "parameters": {"nuslerp_flatten": False},
        },
        "nuslerp_columns": {
            "merge_method": "nuslerp",
            "models": weights,
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        },
        "multislerp": {
            "merge_method": "multislerp",
            "base_model": base,
            "models": [*weights, {"model": ft2, "parameters": {"weight": 0.2}}],
        },
        "karcher": {
            "merge_method": "karcher",
            "base_model": base,  # averaged as a third input, as mergekit does
            "models": [{"model": ft1}, {"model": far}],
            "parameters": {"max_iter": 5},
        },
        "sce": {
            "merge_method": "sce",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}, {"model": far}],
            "parameters": {"select_topk": [0.3, 0.9]},
        },
        "arcee_fusion": {
            "merge_method": "arcee_fusion",
            "base_model": base,
            "models": [{"model": base}, {"model": far}],
        },
        "nearswap": {
            "merge_method": "nearswap",
            "base_model": base,
            "models": [{"model": base}, {"model": ft1}],
            "parameters": {"t": [{"filter": "mlp", "value": [0.0005, 0.004]}, {"value": 0.002}]},
        },
        "ram": {
            "merge_method": "ram",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}],
            "parameters": {"epsilon": 0.002},
        },
        "ramplus_tl": {
            "merge_method": "ramplus_tl",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}],
            "parameters": {"epsilon": 0.002, "r": 0.5, "alpha": 1.0},
        },
    }


E2E = list(_configs({k: k for k in ("base", "ft1", "ft2", "far")}))


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, str]:
    return _family(str(tmp_path_factory.mktemp("parity-methods")), layers=3)


@pytest.mark.integration
@pytest.mark.parametrize("case", E2E)
def test_end_to_end_matches_mergekit_yaml(case, family, tmp_path):
    expected, got = _e2e_run(_configs(family)[case], tmp_path)
    method = _configs(family)[case]["merge_method"]
    worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
    if method in EXACT:
        differ = [k for k in expected if not torch.equal(got[k], expected[k])]
        assert not differ, f"{len(differ)} tensors differ from mergekit (max {worst:.3g})"
    else:
        for k in expected:
            assert_close(got[k], expected[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
