"""ZipIt end to end through Ray: the identity property (a model zipped with a permuted copy of
itself computes the same function) for MLPs with dead ReLU units and for a tiny Llama, partial zip,
statistics over several actors, the baselines, and config/input errors."""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from raymerge.cli import main
from raymerge.synth import llama_config, random_weights, save_checkpoint
from raymerge.zipit.forward import llama_forward, mlp_forward
from raymerge.zipit.gather import load_tensors, shard_ranges, shard_stats
from raymerge.zipit.stats import tree_reduce
from tests.helpers import load_model

pytestmark = pytest.mark.integration

WIDTHS = (12, 32, 24, 10)  # inputs, hidden 1, hidden 2, classes


def make_mlp(seed: int, widths=WIDTHS, dead: int = 3) -> dict[str, torch.Tensor]:
    """A random ReLU MLP whose first ``dead`` units of every hidden layer never fire."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(len(widths) - 1):
        w = torch.randn(widths[i + 1], widths[i], generator=g) / widths[i] ** 0.5
        b = torch.randn(widths[i + 1], generator=g) * 0.1
        if i < len(widths) - 2:
            b[:dead] = -1e3
        out[f"layers.{i}.weight"], out[f"layers.{i}.bias"] = w, b
    return out


def permute_mlp(t: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same function with every hidden layer's units shuffled."""
    g = torch.Generator().manual_seed(seed)
    out = dict(t)
    n = len(t) // 2
    for i in range(n - 1):
        perm = torch.randperm(t[f"layers.{i}.weight"].shape[0], generator=g)
        out[f"layers.{i}.weight"] = out[f"layers.{i}.weight"][perm]
        out[f"layers.{i}.bias"] = out[f"layers.{i}.bias"][perm]
        out[f"layers.{i + 1}.weight"] = out[f"layers.{i + 1}.weight"][:, perm]
    return out


def permute_llama(t: dict[str, torch.Tensor], cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Shuffle the residual stream, every MLP's intermediate features and every layer's KV groups
    (with their query heads): the same function."""
    g = torch.Generator().manual_seed(seed)
    d, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, rep = d // heads, heads // kv
    res = torch.randperm(d, generator=g)
    out = {}
    for name, w in t.items():
        if name.endswith("norm.weight"):
            w = w[res]
        elif name == "model.embed_tokens.weight" or name == "lm_head.weight":
            w = w[:, res]
        elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            w = w[:, res]
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            w = w[:, res]
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            w = w[res]
        out[name] = w
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        inner = torch.randperm(out[p + "mlp.up_proj.weight"].shape[0], generator=g)
        out[p + "mlp.gate_proj.weight"] = out[p + "mlp.gate_proj.weight"][inner]
        out[p + "mlp.up_proj.weight"] = out[p + "mlp.up_proj.weight"][inner]
        out[p + "mlp.down_proj.weight"] = out[p + "mlp.down_proj.weight"][:, inner]
        groups = torch.randperm(kv, generator=g)
        kv_rows = (groups[:, None] * hd + torch.arange(hd)).reshape(-1)
        q_rows = (groups[:, None] * rep * hd + torch.arange(rep * hd)).reshape(-1)
        out[p + "self_attn.q_proj.weight"] = out[p + "self_attn.q_proj.weight"][q_rows]
        out[p + "self_attn.k_proj.weight"] = out[p + "self_attn.k_proj.weight"][kv_rows]
        out[p + "self_attn.v_proj.weight"] = out[p + "self_attn.v_proj.weight"][kv_rows]
        out[p + "self_attn.o_proj.weight"] = out[p + "self_attn.o_proj.weight"][:, q_rows]
    return out


def write_cfg(tmp_path, models, **extra) -> str:
    cfg = {"merge_method": "zipit", "models": [{"model": m} for m in models], **extra}
    p = tmp_path / "zip.json"
    p.write_text(json.dumps(cfg))
    return str(p)


@pytest.fixture(scope="module")
def mlp_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlp")
    a = make_mlp(1)
    b = permute_mlp(a, 2)
    pa = save_checkpoint(str(root / "a"), a, None, n_shards=1, dtype=torch.float32)
    pb = save_checkpoint(str(root / "b"), b, None, n_shards=2, dtype=torch.float32)
    x = torch.randn(300, WIDTHS[0], generator=torch.Generator().manual_seed(3))
    cal = str(root / "cal.safetensors")
    save_file({"inputs": x}, cal)
    return a, pa, pb, cal, x


def run(cfg: str, out, capsys, *extra) -> None:
    rc = main(["run", cfg, str(out), "--no-progress", *extra])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("matcher", ["zipit", "permute"])
def test_mlp_zipped_with_permuted_copy_is_the_same_function(
    matcher, mlp_pair, tmp_path, ray_session, capsys
):
    a, pa, pb, cal, x = mlp_pair
    params = {"alpha": 0.5, "beta": 1.0, "matcher": matcher}
    cfg = write_cfg(tmp_path, [pa, pb], parameters=params, calibration={"url": cal, "shards": 3})
    run(cfg, tmp_path / "out", capsys)
    got = load_model(str(tmp_path / "out"))
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in a.items()}
    want, _ = mlp_forward(a, x)
    out, _ = mlp_forward(got, x)
    assert (out - want).abs().max() < 1e-4
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert {r["method"] for r in rows} == {"zipit"} and len(rows) == len(a)
    summary = json.loads((tmp_path / "out" / "_SUCCESS").read_text())["summary"]
    assert summary["zipit"]["spaces"] == 2 and summary["zipit"]["samples"] == 300


def test_identity_matcher_is_weight_averaging(mlp_pair, tmp_path, ray_session, capsys):
    a, pa, pb, _, _ = mlp_pair
    cfg = write_cfg(tmp_path, [pa, pb], parameters={"matcher": "identity"})
    run(cfg, tmp_path / "out", capsys)
    got = load_model(str(tmp_path / "out"))
    b = load_model(pb)
    for name in a:
        torch.testing.assert_close(got[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-7)


def test_partial_zip_gives_trunk_and_one_head_per_model(mlp_pair, tmp_path, ray_session, capsys):
    a, pa, pb, cal, x = mlp_pair
    cfg = write_cfg(
        tmp_path, [pa, pb], parameters={"stop_at": 1}, calibration={"url": cal, "batch_size": 50}
    )
    run(cfg, tmp_path / "out", capsys)
    got = load_model(str(tmp_path / "out"))
    assert sorted(got) == sorted(
        ["layers.0.weight", "layers.0.bias"]
        + [f"heads.{j}.layers.{i}.{k}" for j in (0, 1) for i in (1, 2) for k in ("weight", "bias")]
    )
    heads, _ = mlp_forward(got, x)
    want, _ = mlp_forward(a, x)
    assert len(heads) == 2
    for h in heads:
        assert (h - want).abs().max() < 1e-4


def _streamed(layout, lays, config, x, shards):
    """Reduced statistics of every space from the streaming actors (no matching)."""
    import ray

    from raymerge.execution.zipit_stage import stream_stats
    from raymerge.options import ExecOptions

    roots = {}

    def keep(name, ref, slots):
        roots[name] = ref

    models = [(lay.location, lay.tensors) for lay in lays]
    info = stream_stats(layout, models, config, x, shards, ExecOptions(), keep, actors=2)
    return {k: ray.get(r) for k, r in roots.items()}, info


def test_statistics_over_several_actors_equal_one_pass(mlp_pair, ray_session):
    from raymerge.io.reader import read_model
    from raymerge.storage import resolve
    from raymerge.zipit.spaces import describe

    _, pa, pb, _, x = mlp_pair
    lays = [read_model(p, resolve(p)) for p in (pa, pb)]
    layout = describe({n: t.shape for n, t in lays[0].tensors.items()}, None, 2)
    spaces = ["h0", "h1"]
    shards = shard_ranges(len(x), 40, 4)
    got, info = _streamed(layout, lays, None, x, shards)
    assert info["actors"] == 2 and len(info["stage_s"]) == 2
    loaded = [load_tensors(lay.location, lay.tensors) for lay in lays]
    one = shard_stats("mlp", loaded, None, x, [(0, len(x))], spaces)
    for s in spaces:
        assert got[s].count == one[s].count == len(x)
        torch.testing.assert_close(got[s].sum, one[s].sum, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(got[s].outer, one[s].outer, rtol=1e-12, atol=1e-9)
    # the layer-streamed actors equal the all-in-memory reference, shard by shard, exactly
    for s in spaces:
        per_shard = [shard_stats("mlp", loaded, None, x, b, spaces)[s] for b in shards]
        ref = tree_reduce(per_shard)
        assert torch.equal(ref.outer, got[s].outer) and torch.equal(ref.sum, got[s].sum)


def test_llama_streamed_actors_equal_reference(llama_pair, ray_session):
    from raymerge.io.reader import read_model
    from raymerge.storage import resolve
    from raymerge.zipit.spaces import describe

    cfg, _, _, pa, pb, _, ids = llama_pair
    lays = [read_model(p, resolve(p)) for p in (pa, pb)]
    layout = describe({n: t.shape for n, t in lays[0].tensors.items()}, cfg, 2)
    shards = shard_ranges(len(ids), 5, 3)
    got, info = _streamed(layout, lays, cfg, ids, shards)
    assert info["actors"] == 2 and len(info["stage_s"]) == cfg["num_hidden_layers"] + 1
    loaded = [load_tensors(lay.location, lay.tensors) for lay in lays]
    names = [s.name for s in layout.spaces]
    per_shard = [shard_stats("llama", loaded, cfg, ids, b, names) for b in shards]
    assert sorted(got) == sorted(names)
    for s in names:
        ref = tree_reduce([p[s] for p in per_shard])
        assert ref.count == got[s].count
        assert torch.equal(ref.outer, got[s].outer) and torch.equal(ref.sum, got[s].sum), s


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    cfg = llama_config(hidden=32, intermediate=48, layers=2, vocab=64, heads=4, kv_heads=2)
    cfg["tie_word_embeddings"] = False
    a = random_weights(cfg, 5)
    b = permute_llama(a, cfg, 6)
    pa = save_checkpoint(str(root / "a"), a, cfg, n_shards=2, dtype=torch.float32)
    pb = save_checkpoint(str(root / "b"), b, cfg, n_shards=1, dtype=torch.float32)
    ids = torch.randint(0, 64, (24, 12), generator=torch.Generator().manual_seed(7))
    cal = str(root / "cal.parquet")
    import pyarrow as pa_
    import pyarrow.parquet as pq_

    pq_.write_table(pa_.table({"input_ids": ids.tolist()}), cal)
    return cfg, a, b, pa, pb, cal, ids


def test_llama_forward_matches_transformers(llama_pair):
    transformers = pytest.importorskip("transformers")
    cfg, a, _, pa, _, _, ids = llama_pair
    model = transformers.AutoModelForCausalLM.from_pretrained(pa, torch_dtype=torch.float32)
    with torch.no_grad():
        want = model(ids).logits
    got, _ = llama_forward(a, cfg, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_llama_permuted_copy_is_the_same_function(llama_pair):
    cfg, a, b, *_, ids = llama_pair
    torch.testing.assert_close(
        llama_forward(b, cfg, ids)[0], llama_forward(a, cfg, ids)[0], rtol=1e-5, atol=1e-5
    )


def test_llama_zip_end_to_end(llama_pair, tmp_path, ray_session, capsys):
    cfg, a, _, pa, pb, cal, ids = llama_pair
    zcfg = write_cfg(tmp_path, [pa, pb], calibration={"url": cal, "batch_size": 8})
    run(zcfg, tmp_path / "out", capsys)
    got = load_model(str(tmp_path / "out"))
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in a.items()}
    want, _ = llama_forward(a, cfg, ids)
    out, _ = llama_forward(got, cfg, ids)
    assert (out - want).abs().max() < 1e-4
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert model.config.num_hidden_layers == cfg["num_hidden_layers"]


def test_config_errors(mlp_pair, tmp_path, capsys):
    _, pa, pb, cal, _ = mlp_pair
    cases = [
        ({"parameters": {"alpha": 2.0}, "calibration": {"url": cal}}, "parameters.alpha"),
        ({"parameters": {"matcher": "greedy"}, "calibration": {"url": cal}}, "must be one of"),
        ({}, "calibration: required by zipit"),
        ({"calibration": {"url": cal, "batch": 3}}, "calibration.batch: unknown key"),
        ({"base_model": pa, "calibration": {"url": cal}}, "does not use a base model"),
    ]
    for extra, msg in cases:
        p = write_cfg(tmp_path, [pa, pb], **extra)
        assert main(["plan", p]) == 2
        assert msg in capsys.readouterr().err, (extra, msg)


def test_input_errors_before_any_data(mlp_pair, tmp_path, capsys):
    _, pa, pb, _, _ = mlp_pair
    bad = tmp_path / "bad.safetensors"
    save_file({"inputs": torch.zeros(4, 7)}, str(bad))
    p = write_cfg(tmp_path, [pa, pb], calibration={"url": str(bad)})
    assert main(["run", p, str(tmp_path / "o"), "--no-progress"]) == 2
    assert "inputs have 7 features, the models read 12" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    p = write_cfg(tmp_path, [pa, pb], parameters={"stop_at": 3}, calibration={"url": str(bad)})
    assert main(["plan", p]) == 2
    assert "stop_at must be in [1, 2]" in capsys.readouterr().err


def test_a_changed_calibration_is_never_complete_or_resumed(
    mlp_pair, tmp_path, ray_session, capsys
):
    """The calibration file is an input of the run record: after it changes, a rerun of the
    finished output is refused (not "already complete" with the old matchings)."""
    import shutil

    _, pa, pb, cal, _ = mlp_pair
    mine = tmp_path / "cal.safetensors"
    shutil.copy(cal, mine)
    cfg = write_cfg(tmp_path, [pa, pb], calibration={"url": str(mine), "shards": 2})
    out = tmp_path / "out"
    run(cfg, out, capsys)
    run(cfg, out, capsys)  # unchanged: already complete
    assert "already complete" in capsys.readouterr().out
    data = bytearray(mine.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)
    mine.write_bytes(bytes(data))
    assert main(["run", cfg, str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "made from other" in err and "cal.safetensors" in err


def test_zipit_from_s3_is_bit_identical_to_local_and_deterministic(
    mlp_pair, tmp_path, ray_session, s3, capsys
):
    from raymerge.storage import resolve
    from tests.helpers import shard_bytes

    _, pa, pb, cal, _ = mlp_pair
    fs = resolve("s3://zip", {"s3://": s3}).fs
    fs.mkdir("zip")
    for name, p in (("a", pa), ("b", pb)):
        fs.put(p, f"zip/{name}", recursive=True)
    fs.put(cal, "zip/cal.safetensors")
    params = {"alpha": 0.3, "beta": 0.5}
    local = write_cfg(tmp_path, [pa, pb], parameters=params, calibration={"url": cal})
    run(local, tmp_path / "l1", capsys)
    run(local, tmp_path / "l2", capsys, "--in-flight", "1")
    assert shard_bytes(str(tmp_path / "l1")) == shard_bytes(str(tmp_path / "l2"))
    remote = tmp_path / "remote.json"
    remote.write_text(
        json.dumps(
            {
                "merge_method": "zipit",
                "models": [{"model": "s3://zip/a"}, {"model": "s3://zip/b"}],
                "parameters": params,
                "calibration": {"url": "s3://zip/cal.safetensors", "shards": 2},
                "storage_options": {"s3://": s3},
            }
        )
    )
    run(str(remote), "s3://zip/out", capsys)
    got = fs.cat_file("zip/out/model-00001-of-00001.safetensors")
    assert got == shard_bytes(str(tmp_path / "l1"))["model-00001-of-00001.safetensors"]


def _checkpoint(folder):
    """A partial zip's checkpoint loaded with transformers, and what the loader reported."""
    transformers = pytest.importorskip("transformers")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), output_loading_info=True
    )
    return model, info


def test_llama_partial_zip_gives_one_loadable_checkpoint_per_model(
    llama_pair, tmp_path, ray_session, capsys
):
    cfg, a, _, pa, pb, cal, ids = llama_pair
    zcfg = write_cfg(
        tmp_path, [pa, pb], parameters={"stop_at": 1}, calibration={"url": cal, "batch_size": 8}
    )
    out = tmp_path / "out"
    run(zcfg, out, capsys)
    want, _ = llama_forward(a, cfg, ids)
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["checkpoints"] == ["model_0", "model_1"]
    assert marker["summary"]["zipit"]["spaces"] == 3  # res, attn.0, mlp.0: the trunk's
    for j in (0, 1):
        model, info = _checkpoint(out / f"model_{j}")
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert not any(info.values()), info
        assert type(model).__name__ == "LlamaForCausalLM"
        with torch.no_grad():
            logits = model(ids).logits
        # a permuted copy's residual matching is a permutation: each checkpoint is model a
        assert (logits - want).abs().max() < 1e-4
        assert (out / f"model_{j}" / "_SUCCESS").exists()
        assert main(["verify", str(out / f"model_{j}")]) == 0
    assert main(["verify", str(out)]) == 0
    assert "2 shards" in capsys.readouterr().out


def test_llama_partial_zip_at_full_depth_equals_full_zip(llama_pair, tmp_path, ray_session, capsys):
    cfg, _, _, pa, pb, cal, _ = llama_pair
    calib = {"url": cal, "batch_size": 8}
    depth = cfg["num_hidden_layers"]
    run(write_cfg(tmp_path, [pa, pb], calibration=calib), tmp_path / "full", capsys)
    part = write_cfg(tmp_path, [pa, pb], parameters={"stop_at": depth}, calibration=calib)
    run(part, tmp_path / "part", capsys)
    full = load_model(str(tmp_path / "full"))
    for j in (0, 1):
        got = load_model(str(tmp_path / "part" / f"model_{j}"))
        assert sorted(got) == sorted(full)
        for name in full:
            assert torch.equal(got[name], full[name]), (j, name)


def test_llama_partial_output_never_looks_complete(llama_pair, tmp_path, ray_session, capsys):
    from raymerge.config import load_config
    from raymerge.options import RunOptions
    from raymerge.pipeline import RunHooks, run_merge

    _, _, _, pa, pb, cal, _ = llama_pair
    zcfg = write_cfg(
        tmp_path, [pa, pb], parameters={"stop_at": 1}, calibration={"url": cal, "batch_size": 8}
    )
    out = tmp_path / "out"
    run(zcfg, out, capsys)
    markers = [out / "_SUCCESS", out / "model_0" / "_SUCCESS", out / "model_1" / "_SUCCESS"]
    assert all(m.exists() for m in markers)

    def boom(job, n):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        opts = RunOptions(overwrite=True)
        opts.execution.progress = False
        run_merge(load_config(zcfg), str(out), opts, RunHooks(after_job=boom))
    assert not any(m.exists() for m in markers)  # the earlier run's markers are gone too
    assert main(["verify", str(out / "model_0")]) == 2
    capsys.readouterr()
    run(zcfg, out, capsys, "--json")  # the rerun completes it, every job recomputed: kept jobs
    assert json.loads(capsys.readouterr().out)["reused_jobs"] == 0  # could follow old matchings
    assert all(m.exists() for m in markers) and main(["verify", str(out)]) == 0
    # a checkpoint of another run, a marker naming a path, a stray file: verify fails
    ck, root = out / "model_1" / "_SUCCESS", out / "_SUCCESS"
    good_ck, good_root = ck.read_text(), root.read_text()
    ck.write_text(json.dumps({**json.loads(good_ck), "run_id": "another"}))
    assert main(["verify", str(out)]) == 2
    assert "written by another run" in capsys.readouterr().err
    ck.write_text(good_ck)
    root.write_text(json.dumps({**json.loads(good_root), "checkpoints": ["model_0", "../x"]}))
    assert main(["verify", str(out)]) == 2
    root.write_text(good_root)
    (out / "model-00001-of-00001.safetensors").write_bytes(b"stray")
    assert main(["verify", str(out)]) == 2
    (out / "model-00001-of-00001.safetensors").unlink()
    assert main(["verify", str(out)]) == 0


def test_zipit_memory_is_stated_and_checked_before_any_data(llama_pair, tmp_path, capsys):
    cfg, _, _, pa, pb, cal, _ = llama_pair
    zcfg = write_cfg(tmp_path, [pa, pb], calibration={"url": cal, "batch_size": 8})
    assert main(["plan", zcfg, "--node-memory", "64GB"]) == 0
    text = capsys.readouterr().out
    assert "zipit statistics: peak per actor" in text and "checked against 64.0 GB" in text
    assert main(["plan", zcfg, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["zipit"]["node_memory"]["source"].startswith("this machine's memory")
    assert set(s["zipit"]["spaces"]) == {"res", "attn.0", "mlp.0", "attn.1", "mlp.1"}
    actor = s["zipit"]["actor_bytes"]
    assert main(["plan", zcfg, "--node-memory", str(actor - 1)]) == 2
    assert "a statistics actor needs" in capsys.readouterr().err
    mlp = s["zipit"]["spaces"]["mlp.1"]["bytes"]
    small = write_cfg(tmp_path, [pa, pb], calibration={"url": cal, "batch_size": 1, "shards": 24})
    assert main(["run", small, str(tmp_path / "o"), "--node-memory", str(mlp - 1)]) == 2
    err = capsys.readouterr().err
    assert "space 'mlp.0'" in err and "space 'mlp.1'" in err and "--node-memory" in err
    assert not (tmp_path / "o").exists()  # refused before the output was claimed


def test_llama_partial_zip_to_s3(llama_pair, tmp_path, ray_session, s3, capsys):
    from raymerge.storage import resolve
    from raymerge.verify import verify_output

    cfg, a, _, pa, pb, cal, ids = llama_pair
    fs = resolve("s3://part", {"s3://": s3}).fs
    fs.mkdir("part")
    zcfg = tmp_path / "s3.json"
    zcfg.write_text(
        json.dumps(
            {
                "merge_method": "zipit",
                "models": [{"model": pa}, {"model": pb}],
                "parameters": {"stop_at": 1},
                "calibration": {"url": cal, "batch_size": 8},
                "storage_options": {"s3://": s3},
            }
        )
    )
    run(str(zcfg), "s3://part/out", capsys)
    got = verify_output(resolve("s3://part/out", {"s3://": s3}))
    assert sorted(got["checkpoints"]) == ["model_0", "model_1"]
    local = tmp_path / "m1"
    fs.get("part/out/model_1", str(local), recursive=True)
    model, info = _checkpoint(local)
    assert not any(info.values())
    with torch.no_grad():
        logits = model(ids).logits
    assert (logits - llama_forward(a, cfg, ids)[0]).abs().max() < 1e-4
