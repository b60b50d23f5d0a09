"""End to end through a real local Ray cluster (one per session): merge, verify, refuse, fail safe."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from raymerge.cli import main
from raymerge.config import load_config
from raymerge.synth import random_weights, save_checkpoint
from tests.helpers import load_model, reference_merge, shard_bytes

pytestmark = pytest.mark.integration


def write_cfg(tmp_path, family, method="task_arithmetic", **extra):
    base, ft1, ft2 = family
    cfg = {
        "merge_method": method,
        "models": [
            {"model": ft1, "parameters": {"weight": [0.2, 0.9]}},
            {
                "model": ft2,
                "parameters": {"weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.3}]},
            },
        ],
    }
    if method == "task_arithmetic":
        cfg["base_model"] = base
        cfg["parameters"] = {"lambda": 0.8}
    cfg.update(extra)
    p = tmp_path / f"{method}.yaml"
    p.write_text(json.dumps(cfg))
    return str(p)


def run_cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_merge_equals_reference_and_verifies(tmp_path, family, ray_session, capsys, method):
    cfg_path = write_cfg(tmp_path, family, method)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        ["run", cfg_path, str(out), "--shard-size", "60KB", "--no-progress"], capsys
    )
    assert rc == 0, err
    merged = load_model(str(out))
    expected = reference_merge(load_config(cfg_path))
    assert merged.keys() == expected.keys()
    for name in expected:
        assert torch.equal(merged[name], expected[name]), name
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1
    assert {
        "_SUCCESS",
        "manifest.parquet",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "README.md",
    } <= set(files)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected) and set(index["weight_map"].values()) == set(
        shards
    )
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    table = pq.read_table(out / "manifest.parquet")
    assert table.num_rows == len(expected)
    row = table.to_pylist()[0]
    assert row["status"] == "done" and len(row["checksum"]) == 16 and row["sources"]
    assert method in (out / "README.md").read_text()
    rc, stdout, err = run_cli(["verify", str(out)], capsys)
    assert rc == 0 and "OK" in stdout


def test_chunked_output_is_bit_identical(tmp_path, family, ray_session, capsys):
    cfg_path = write_cfg(tmp_path, family)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["run", cfg_path, str(a), "--no-progress"], capsys)[0] == 0
    rc, _, err = run_cli(
        ["run", cfg_path, str(b), "--no-progress", "--job-memory", "33MiB", "--job-bytes", "2KiB"],
        capsys,
    )
    assert rc == 0, err
    rows = pq.read_table(b / "manifest.parquet").to_pylist()
    assert max(r["n_chunks"] for r in rows) > 4
    assert shard_bytes(str(a)) == shard_bytes(str(b))


def test_plan_json_has_the_promised_keys(tmp_path, family, capsys):
    rc, stdout, _ = run_cli(["plan", write_cfg(tmp_path, family), "--json"], capsys)
    s = json.loads(stdout)
    assert rc == 0
    for key in (
        "tensors",
        "jobs",
        "bytes_read",
        "bytes_written",
        "output_shards",
        "peak_job_memory_bytes",
    ):
        assert key in s
    assert s["tensors"] == len(load_model(family[0]))
    assert s["bytes_read"] == 3 * sum(t.numel() * 2 for t in load_model(family[0]).values())


def test_output_loads_with_transformers(tmp_path, family, ray_session, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    assert run_cli(["run", write_cfg(tmp_path, family), str(out), "--no-progress"], capsys)[0] == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 3


def _assert_nothing_complete(out):
    if not os.path.exists(out):
        return
    names = os.listdir(out)
    assert "_SUCCESS" not in names
    assert not [n for n in names if n.startswith("model-")], names


def _bad_inputs(tmp_path, family, tiny_cfg):
    base, ft1, _ = family
    pick = tmp_path / "pickles"
    pick.mkdir()
    (pick / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ft1, corrupt)
    shard = sorted(p for p in os.listdir(corrupt) if p.endswith(".safetensors"))[0]
    with open(corrupt / shard, "r+b") as f:
        f.seek(8)
        f.write(b"[")
    missing_shard = tmp_path / "missing_shard"
    shutil.copytree(ft1, missing_shard)
    os.remove(missing_shard / shard)
    w = random_weights(tiny_cfg, 5)
    w_missing = dict(w)
    w_missing.pop("model.norm.weight")
    save_checkpoint(str(tmp_path / "lacks_norm"), w_missing, tiny_cfg, n_shards=1)
    w_shape = dict(w)
    w_shape["model.norm.weight"] = torch.ones(65)
    save_checkpoint(str(tmp_path / "bad_shape"), w_shape, tiny_cfg, n_shards=1)
    return {
        "missing path": (str(tmp_path / "nope"), "model folder not found"),
        "pickle only": (str(pick), "never unpickles"),
        "corrupt header": (str(corrupt), f"{shard}: invalid safetensors file"),
        "missing shard": (str(missing_shard), "that do not exist in the folder"),
        "tensor missing": (str(tmp_path / "lacks_norm"), "'model.norm.weight' is in"),
        "shape mismatch": (str(tmp_path / "bad_shape"), "shape [64] in"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "pickle only",
        "corrupt header",
        "missing shard",
        "tensor missing",
        "shape mismatch",
    ],
)
def test_bad_input_exit_2_clear_error_nothing_written(tmp_path, family, tiny_cfg, capsys, case):
    model, expected = _bad_inputs(tmp_path, family, tiny_cfg)[case]
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": family[0],
        "models": [{"model": model, "parameters": {"weight": 1.0}}],
    }
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    rc, _, err = run_cli(["run", str(p), str(out)], capsys)
    assert rc == 2
    assert err.startswith("raymerge: error: ") and expected in err, err
    assert "Traceback" not in err
    assert not out.exists()  # detected from headers before the output was touched


def test_config_errors_exit_2(tmp_path, family, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps({"merge_method": "ties2", "models": [{"model": family[1]}]}))
    rc, _, err = run_cli(["run", str(p), str(tmp_path / "o")], capsys)
    assert rc == 2 and "unknown merge method 'ties2' (did you mean 'ties'?); valid: linear, " in err


def test_unwritable_out(tmp_path, family, capsys):
    if os.geteuid() == 0:
        target = "/proc/raymerge-out"  # not writable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro / "out")
    rc, _, err = run_cli(["run", write_cfg(tmp_path, family), target], capsys)
    assert rc == 2 and "raymerge: error:" in err and "Traceback" not in err


def test_other_config_is_refused_same_config_reruns(tmp_path, family, ray_session, capsys):
    out = tmp_path / "out"
    a = write_cfg(tmp_path, family, "task_arithmetic")
    b = write_cfg(tmp_path, family, "linear")
    assert run_cli(["run", a, str(out), "--no-progress"], capsys)[0] == 0
    first = shard_bytes(str(out))
    rc, _, err = run_cli(["run", b, str(out), "--no-progress"], capsys)
    assert rc == 2 and "different config" in err
    assert (out / "_SUCCESS").exists() and shard_bytes(str(out)) == first  # untouched
    assert run_cli(["run", a, str(out), "--no-progress"], capsys)[0] == 0
    assert shard_bytes(str(out)) == first
    assert run_cli(["run", b, str(out), "--no-progress", "--overwrite"], capsys)[0] == 0
    assert shard_bytes(str(out)) != first
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _, err = run_cli(["run", a, str(other), "--no-progress"], capsys)
    assert rc == 2 and "holds no raymerge run" in err


def test_nonfinite_input_fails_safely(tmp_path, family, tiny_cfg, ray_session, capsys):
    w = random_weights(tiny_cfg, 9)
    w["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    nan_model = save_checkpoint(str(tmp_path / "nan"), w, tiny_cfg, n_shards=2)
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": family[1], "parameters": {"weight": 1}},
            {"model": nan_model, "parameters": {"weight": 1}},
        ],
    }
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    rc, _, err = run_cli(["run", str(p), str(out), "--no-progress"], capsys)
    assert rc == 2 and "'model.layers.1.mlp.up_proj.weight' holds NaN or Inf" in err
    _assert_nothing_complete(out)
    rc, _, err = run_cli(["run", str(p), str(out), "--no-progress", "--allow-nonfinite"], capsys)
    assert rc == 0, err
    assert torch.isnan(load_model(str(out))["model.layers.1.mlp.up_proj.weight"][3, 5])


def test_verify_detects_corruption(tmp_path, family, ray_session, capsys):
    out = tmp_path / "out"
    assert run_cli(["run", write_cfg(tmp_path, family), str(out), "--no-progress"], capsys)[0] == 0
    shard = sorted(out.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    pos = len(data) - 3
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    hit = next(
        r["name"] for r in rows if r["shard"] == shard.name and r["out_start"] <= pos < r["out_end"]
    )
    rc, _, err = run_cli(["verify", str(out)], capsys)
    assert rc == 2 and "do not match the manifest checksum" in err and f"tensor {hit!r}" in err
    os.remove(out / "_SUCCESS")
    rc, _, err = run_cli(["verify", str(out)], capsys)
    assert rc == 2 and "no _SUCCESS marker" in err


def test_empty_and_rank0_tensors_merge(tmp_path, ray_session, capsys):
    for k, name in enumerate(("a", "b")):
        os.makedirs(tmp_path / name)
        save_file(
            {
                "scalar": torch.tensor(float(k + 1)),
                "empty": torch.zeros(0, 3),
                "w": torch.full((3, 2), float(k)),
            },
            str(tmp_path / name / "model.safetensors"),
            metadata={"format": "pt"},
        )
    p = tmp_path / "c.yaml"
    p.write_text(
        json.dumps(
            {
                "merge_method": "linear",
                "models": [
                    {"model": str(tmp_path / "a"), "parameters": {"weight": 1}},
                    {"model": str(tmp_path / "b"), "parameters": {"weight": 3}},
                ],
            }
        )
    )
    rc, _, err = run_cli(["run", str(p), str(tmp_path / "out"), "--no-progress"], capsys)
    assert rc == 0, err
    got = load_model(str(tmp_path / "out"))
    assert got["scalar"].item() == 1.75 and got["empty"].shape == (0, 3)
    assert torch.equal(got["w"], torch.full((3, 2), 0.75))


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_jobs_on_gpu_match_cpu(tmp_path, family, method):
    """run_job with device="cuda" (pinned host buffers, kernels on the device) writes what the
    CPU path writes, up to float rounding."""
    from raymerge.io.sinks import make_sink
    from raymerge.options import RunOptions
    from raymerge.pipeline import build_plan
    from raymerge.storage import resolve
    from raymerge.worker import JobContext, run_job
    from tests.helpers import task_arithmetic_config

    body = task_arithmetic_config(family)
    if method == "ties":
        body.update(merge_method="ties", parameters={"density": 0.5})
    cfg = load_config(_write_json(tmp_path / "cfg.json", body))
    plan, layouts = build_plan(cfg, RunOptions(job_bytes=64 << 10), 0)
    got = {}
    for device in ("cpu", "cuda"):
        out = resolve(str(tmp_path / device))
        sink = make_sink(out, plan.shard_specs())
        sink.prepare()
        ctx = JobContext(
            inputs=tuple(lay.location for lay in layouts),
            method=plan.method,
            math_dtype="F32",
            headers=tuple(s.header for s in plan.shards),
            sink=sink,
        )
        for job in plan.jobs:
            run_job(job, ctx, device=device)
        got[device] = {
            s.name: (tmp_path / device / ".raymerge" / "staging" / s.name).read_bytes()
            for s in plan.shards
        }
    for name, data in got["cpu"].items():
        from safetensors.torch import load as load_bytes

        want, have = load_bytes(data), load_bytes(got["cuda"][name])
        for key in want:
            torch.testing.assert_close(have[key].float(), want[key].float(), rtol=1e-2, atol=1e-3)


def _write_json(path, body):
    path.write_text(json.dumps(body))
    return str(path)


def test_network_bound_jobs_share_a_cpu(ray_session, tmp_path):
    """Jobs with a remote input or output ask for half a CPU (one computes while the other waits
    on the network); local ones a whole CPU; --jobs-per-cpu overrides both."""
    from types import SimpleNamespace as NS

    from raymerge.execution.submit import Submitter
    from raymerge.options import ExecOptions
    from raymerge.storage import resolve
    from raymerge.worker import JobContext

    local, remote = resolve(str(tmp_path)), resolve("s3://bucket/model", {})
    ctx = JobContext((local,), "linear", "F32", (), NS(kind="local"))
    assert not ctx.remote_io
    assert JobContext((local, remote), "linear", "F32", (), NS(kind="local")).remote_io
    assert JobContext((local,), "linear", "F32", (), NS(kind="s3")).remote_io
    cases = [(ExecOptions(), False, 1, 4), (ExecOptions(), True, 0.5, 8)]
    cases.append((ExecOptions(jobs_per_cpu=4), False, 0.25, 16))
    for opts, remote_io, cpus, limit in cases:
        runner = Submitter(opts, remote_io)
        assert (runner.num_cpus, runner.limit, runner.pool) == (cpus, limit, None)
