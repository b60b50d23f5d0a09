"""Every method end to end through Ray: equal to the in-process reference, chunk-invariant through
the distributed statistics rounds, slices and frankenmerges, config errors for each method."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from raymerge.cli import main
from raymerge.config import load_config
from tests.helpers import load_model, reference_merge, shard_bytes

pytestmark = pytest.mark.integration

METHOD_CONFIGS = {
    "ties": {"parameters": {"density": 0.3, "weight": 1.0}},
    "dare_ties": {"parameters": {"density": 0.5, "weight": [0.5, 1.0]}},
    "dare_linear": {"parameters": {"density": 0.6, "weight": 0.5}},
    "breadcrumbs_ties": {"parameters": {"density": 0.6, "gamma": 0.05, "weight": 1.0}},
    "della": {"parameters": {"density": 0.5, "epsilon": 0.1, "weight": 1.0}},
    "model_stock": {},
    "slerp": {"parameters": {"t": [0.0, 0.5, 1.0]}},
    "nuslerp": {"parameters": {"weight": [0.3, 0.7]}},
    "nuslerp_rows": {"parameters": {"weight": 1.0, "nuslerp_flatten": False}},
    "multislerp": {"parameters": {"weight": [1.0, 0.5]}},
    "karcher": {"parameters": {"max_iter": 4}},  # the base is averaged as a fourth input
    "sce": {"parameters": {"select_topk": 0.5}},
    "arcee_fusion": {},
    "nearswap": {"parameters": {"t": 0.001}},
    "ram": {"parameters": {"epsilon": 0.001}},
    "ramplus_tl": {"parameters": {"epsilon": 0.001, "r": 0.5, "alpha": 1.0}},
}
ONE_MODEL = {"slerp", "arcee_fusion", "nearswap"}
# merged whole (never chunked): equal to the reference, refused when a tensor cannot fit a job
WHOLE_CONFIGS = {
    "tsv_m": {"parameters": {"lambda": 0.8}},
    "iso_c": {},
    "iso_cts": {"parameters": {"common_space_fraction": 0.5}},
    "nuslerp_columns": {
        "parameters": {"weight": 1.0, "nuslerp_flatten": False, "nuslerp_row_wise": True}
    },
}


def cfg_for(case: str, fam: list[str], tmp_path, configs=None) -> str:
    base, *fts = fam
    method = case.split("_rows")[0].split("_columns")[0]
    n = 1 if method in ONE_MODEL else 2 if method == "nuslerp" else len(fts)
    cfg = {
        "merge_method": method,
        "base_model": base,
        "random_seed": 7,
        "models": [{"model": m} for m in fts[:n]],
        **(configs or METHOD_CONFIGS)[case],
    }
    p = tmp_path / f"{case}.json"
    p.write_text(json.dumps(cfg))
    return str(p)


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_method_through_ray_equals_reference_and_chunking_changes_nothing(
    method, tmp_path, wide_family, ray_session, capsys
):
    path = cfg_for(method, wide_family, tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", path, str(a), "--no-progress"]) == 0, capsys.readouterr().err
    expected = reference_merge(load_config(path))
    got = load_model(str(a))
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
    rc = main(
        ["run", path, str(b), "--no-progress", "--job-memory", "34MiB", "--job-bytes", "64KiB"]
    )
    assert rc == 0, capsys.readouterr().err
    rows = pq.read_table(b / "manifest.parquet").to_pylist()
    emb = [r for r in rows if r["name"] == "model.embed_tokens.weight"]
    assert len(emb) > 2  # really chunked (and, for whole-tensor methods, reduced across chunks)
    assert shard_bytes(str(a)) == shard_bytes(str(b))


@pytest.mark.parametrize("case", sorted(WHOLE_CONFIGS))
def test_whole_tensor_method_through_ray_equals_reference(
    case, tmp_path, wide_family, ray_session, capsys
):
    """LAPACK's SVD rounds differently with different thread counts: Ray's workers run torch on
    one thread, so the reference does too."""
    path = cfg_for(case, wide_family, tmp_path, WHOLE_CONFIGS)
    out = tmp_path / "out"
    assert main(["run", path, str(out), "--no-progress"]) == 0, capsys.readouterr().err
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = reference_merge(load_config(path))
    finally:
        torch.set_num_threads(threads)
    got = load_model(str(out))
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {r["n_chunks"] for r in rows} == {1}
    # the in-process executor's job threads run torch on one thread too: the same bytes
    local = tmp_path / "local"
    assert main(["run", path, str(local), "--no-progress", "--executor", "local"]) == 0
    assert shard_bytes(str(local)) == shard_bytes(str(out))
    capsys.readouterr()
    rc = main(["run", path, str(tmp_path / "small"), "--no-progress", "--job-memory", "34MiB"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "model.embed_tokens.weight [4096, 64]" in err and "--job-memory of at least" in err
    assert not (tmp_path / "small" / "_SUCCESS").exists()


def test_frankenmerge_with_slices(tmp_path, family, ray_session, capsys):
    base, ft1, _ = family
    cfg = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": base, "layer_range": [0, 2]}]},
            {"sources": [{"model": ft1, "layer_range": [1, 3]}]},
        ],
        "dtype": "float32",
    }
    p = tmp_path / "frank.json"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["run", str(p), str(out), "--no-progress"]) == 0, capsys.readouterr().err
    got = load_model(str(out))
    b, f = load_model(base), load_model(ft1)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    assert torch.equal(
        got["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"].float()
    )
    assert torch.equal(
        got["model.layers.2.mlp.up_proj.weight"], f["model.layers.1.mlp.up_proj.weight"].float()
    )
    assert torch.equal(
        got["model.layers.3.self_attn.q_proj.weight"],
        f["model.layers.2.self_attn.q_proj.weight"].float(),
    )
    assert torch.equal(got["model.embed_tokens.weight"], b["model.embed_tokens.weight"].float())
    assert torch.equal(got["lm_head.weight"], f["lm_head.weight"].float())
    assert not any(k.startswith("model.layers.4.") for k in got)
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 4


def test_slerp_over_slices_with_base(tmp_path, family, ray_session, capsys):
    base, ft1, _ = family
    cfg = {
        "merge_method": "slerp",
        "base_model": base,
        "slices": [
            {
                "sources": [
                    {"model": base, "layer_range": [0, 3]},
                    {"model": ft1, "layer_range": [0, 3]},
                ]
            }
        ],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]},
    }
    p = tmp_path / "s.json"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["run", str(p), str(out), "--no-progress"]) == 0, capsys.readouterr().err
    got, b, f = load_model(str(out)), load_model(base), load_model(ft1)
    # t = 0 on layer 0's attention gives the base; t = 1 on the last layer gives the other model
    assert torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.allclose(
        got["model.layers.2.self_attn.q_proj.weight"].float(),
        f["model.layers.2.self_attn.q_proj.weight"].float(),
        atol=1e-2,
    )


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (
            {
                "merge_method": "slerp",
                "models": ["A", "B"],
                "base_model": "BASE",
                "parameters": {"t": 0.5},
            },
            "models: slerp takes exactly 1 model(s) besides base_model, got 2",
        ),
        (
            {"merge_method": "slerp", "models": ["A"], "base_model": "BASE"},
            "parameters.t: required by slerp",
        ),
        (
            {
                "merge_method": "ties",
                "models": ["A"],
                "base_model": "BASE",
                "parameters": {"weight": 1, "density": 1.5},
            },
            "parameters.density: must be in (0, 1], got 1.5",
        ),
        (
            {
                "merge_method": "ties",
                "models": ["A"],
                "base_model": "BASE",
                "parameters": {"weight": 1, "bogus": 0.5},
            },
            "parameters.bogus: unknown parameter 'bogus' for ties; valid: weight, normalize, lambda, int8_mask, density, rescale",
        ),
        (
            {"merge_method": "model_stock", "models": ["A"], "base_model": "BASE"},
            "models: model_stock takes at least 2 model(s) besides base_model, got 1",
        ),
        (
            {
                "merge_method": "passthrough",
                "slices": [
                    {
                        "sources": [
                            {"model": "A", "layer_range": [0, 2]},
                            {"model": "B", "layer_range": [0, 3]},
                        ]
                    }
                ],
            },
            "slices[0].sources: layer ranges have different lengths [[0, 2], [0, 3]]",
        ),
        (
            {
                "merge_method": "linear",
                "models": ["A"],
                "slices": [{"sources": [{"model": "A", "layer_range": [0, 1]}]}],
            },
            "give exactly one of 'models' or 'slices'",
        ),
    ],
)
def test_method_config_errors(tmp_path, capsys, cfg, expected):
    if cfg.get("models"):
        cfg["models"] = [
            {
                "model": m,
                **({"parameters": {"weight": 1.0}} if cfg["merge_method"] == "linear" else {}),
            }
            for m in cfg["models"]
        ]
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    rc = main(["plan", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err


def test_layer_range_out_of_bounds(tmp_path, family, capsys):
    cfg = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": family[0], "layer_range": [2, 5]}]}],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    rc = main(["plan", str(p)])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "layer_range: [2, 5] is out of bounds" in err
        and "(3 layers in model.layers.N)" in err
    )
    assert not os.path.exists(tmp_path / "out")


def _vocab_family(tmp_path, tiny_cfg):
    from raymerge.synth import random_weights, save_checkpoint

    base = random_weights(tiny_cfg, 1)
    models = {"base": base}
    for name, rows, seed in (("big", 260, 2), ("small", 250, 3)):
        g = torch.Generator().manual_seed(seed)
        w = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            extra = torch.randn(max(0, rows - 256), 64, generator=g)
            w[k] = torch.cat([w[k][: min(rows, 256)], extra])
        models[name] = w
    paths = {
        n: save_checkpoint(str(tmp_path / n), w, tiny_cfg, n_shards=2, dtype=torch.float32)
        for n, w in models.items()
    }
    return paths, models


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_vocab_mismatch_follows_the_base_vocabulary(
    method, tmp_path, tiny_cfg, ray_session, capsys
):
    from raymerge.methods import merge_whole

    paths, models = _vocab_family(tmp_path, tiny_cfg)
    cfg = {
        "merge_method": method,
        "base_model": paths["base"],
        "models": [
            {"model": paths[n], "parameters": {"weight": w}}
            for n, w in (("big", 0.7), ("small", 0.3))
        ],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    rc = main(["plan", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "[256, 64] in" in err and "set tokenizer_source: base" in err
    cfg["tokenizer_source"] = "base"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["run", str(p), str(out), "--no-progress", "--job-bytes", "8KiB"]) == 0, (
        capsys.readouterr().err
    )
    got = load_model(str(out))
    base = models["base"]
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        padded = [
            torch.cat([models[n][k][:256], base[k][models[n][k].shape[0] :]])
            for n in ("big", "small")
        ]
        wide = {
            "normalize": method == "linear",
            "lambda": 1.0,
            "int8_mask": False,
            "rescale": False,
        }
        per = [{"weight": 0.7, "density": 1.0}, {"weight": 0.3, "density": 1.0}]
        b = base[k] if method == "task_arithmetic" else None
        expected = merge_whole(
            method,
            b,
            padded,
            per if method != "linear" else [{"weight": 0.7}, {"weight": 0.3}],
            wide if method != "linear" else {"normalize": True},
            tensor_name=k,
        )
        assert got[k].shape == (256, 64)
        assert torch.equal(got[k], expected), k


def test_tied_model_merges_into_untied_base(tmp_path, tiny_cfg, ray_session, capsys):
    """A fine-tune with tied embeddings (no lm_head) merged with an untied base: its lm_head is
    its embedding matrix."""
    from raymerge.methods import merge_whole
    from raymerge.synth import random_weights, save_checkpoint

    base = random_weights(tiny_cfg, 1)
    tied = {k: v + 0.01 for k, v in base.items() if k != "lm_head.weight"}
    paths = [
        save_checkpoint(str(tmp_path / n), w, tiny_cfg, n_shards=1, dtype=torch.float32)
        for n, w in (("base", base), ("tied", tied))
    ]
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": paths[0],
        "models": [{"model": paths[1], "parameters": {"weight": 1.0}}],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["run", str(p), str(out), "--no-progress"]) == 0, capsys.readouterr().err
    got = load_model(str(out))
    per = [{"weight": 1.0, "density": 1.0}]
    wide = {"normalize": False, "lambda": 1.0, "int8_mask": False, "rescale": False}
    expected = merge_whole(
        "task_arithmetic", base["lm_head.weight"], [tied["model.embed_tokens.weight"]], per, wide
    )
    assert torch.equal(got["lm_head.weight"], expected)


def test_della_density_epsilon_checked_before_any_data(tmp_path, family, capsys):
    cfg = {
        "merge_method": "della",
        "base_model": family[0],
        "models": [{"model": family[1], "parameters": {"weight": 1.0, "density": 0.95}}],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    rc = main(["run", str(p), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "density 0.95 +/- epsilon 0.15 must stay inside (0, 1)" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_sizes_must_be_positive(tmp_path, family, capsys):
    cfg = {
        "merge_method": "linear",
        "models": [{"model": family[1], "parameters": {"weight": 1.0}}],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    assert main(["plan", str(p), "--job-bytes", "0"]) == 2
    assert "must be at least 1 byte" in capsys.readouterr().err


def test_verify_reports_a_missing_shard(tmp_path, family, ray_session, capsys):
    cfg = {
        "merge_method": "linear",
        "models": [{"model": family[1], "parameters": {"weight": 1.0}}],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["run", str(p), str(out), "--no-progress"]) == 0
    next(out.glob("model-*.safetensors")).unlink()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "listed in the manifest are missing" in err and "Traceback" not in err
