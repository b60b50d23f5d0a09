"""Resume and fault tolerance: driver killed, worker killed, failed runs rerun, on local and S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raymerge.cli import main
from raymerge.storage import resolve
from raymerge.synth import random_weights, save_checkpoint
from tests.helpers import shard_bytes

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def write(tmp_path, cfg, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return str(p)


def nan_family(tmp_path, family, tiny_cfg):
    """ft2 with a NaN in model.norm.weight (the last shard of the output)."""
    w = random_weights(tiny_cfg, 21)
    w["model.norm.weight"][3] = float("nan")
    return save_checkpoint(str(tmp_path / "nan"), w, tiny_cfg, n_shards=2)


COMMON = ["--shard-size", "60KB", "--in-flight", "1", "--ledger-interval", "0"]


def nan_config(tmp_path, family, tiny_cfg) -> str:
    """A linear merge whose second model has a NaN in its last output shard."""
    bad = nan_family(tmp_path, family, tiny_cfg)
    models = [{"model": m, "parameters": {"weight": 1.0}} for m in (family[1], bad)]
    return write(tmp_path, {"merge_method": "linear", "models": models})


def run_json(args, capsys):
    rc = main([*args, "--json", "--no-progress"])
    cap = capsys.readouterr()
    # Ray may print its own notices (e.g. a worker died) on stdout before the summary
    return rc, (json.loads(cap.out[cap.out.index("{\n") :]) if rc == 0 else None), cap.err


def test_failed_run_resumes_keeping_finished_jobs_local(
    tmp_path, family, tiny_cfg, ray_session, capsys
):
    cfg = nan_config(tmp_path, family, tiny_cfg)
    out = tmp_path / "out"
    rc, _, err = run_json(["run", cfg, str(out), *COMMON], capsys)
    assert rc == 2 and "NaN" in err
    assert not (out / "_SUCCESS").exists() and not list(out.glob("model-*"))
    rc, s, err = run_json(["run", cfg, str(out), *COMMON, "--allow-nonfinite"], capsys)
    assert rc == 0, err
    assert 0 < s["reused_jobs"] < s["jobs"]
    fresh = tmp_path / "fresh"
    assert run_json(["run", cfg, str(fresh), *COMMON, "--allow-nonfinite"], capsys)[0] == 0
    assert shard_bytes(str(out)) == shard_bytes(str(fresh))
    statuses = {r["status"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert statuses == {"done", "reused"}
    assert (
        not (out / ".raymerge" / "ledger").exists() and not (out / ".raymerge" / "staging").exists()
    )
    # a rerun of a finished run changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("model-*")}
    rc, s, _ = run_json(["run", cfg, str(out), *COMMON, "--allow-nonfinite"], capsys)
    assert rc == 0 and s["already_complete"]
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("model-*")}


def test_tampered_staging_is_recomputed_not_trusted(
    tmp_path, family, tiny_cfg, ray_session, capsys
):
    cfg = nan_config(tmp_path, family, tiny_cfg)
    out = tmp_path / "out"
    assert run_json(["run", cfg, str(out), *COMMON], capsys)[0] == 2
    staged = sorted((out / ".raymerge" / "staging").iterdir())[0]
    data = bytearray(staged.read_bytes())
    data[-1] ^= 0xFF
    staged.write_bytes(bytes(data))
    rc, s, err = run_json(["run", cfg, str(out), *COMMON, "--allow-nonfinite"], capsys)
    assert rc == 0, err
    fresh = tmp_path / "fresh"
    assert run_json(["run", cfg, str(fresh), *COMMON, "--allow-nonfinite"], capsys)[0] == 0
    assert shard_bytes(str(out)) == shard_bytes(str(fresh))
    assert main(["verify", str(out)]) == 0


def test_failed_run_resumes_on_s3(tmp_path, family, tiny_cfg, ray_session, s3, capsys):
    bad = nan_family(tmp_path, family, tiny_cfg)
    fs = resolve("s3://bkt", {"s3://": s3}).fs
    fs.mkdir("bkt")
    fs.put(family[1], "bkt/in/ft1", recursive=True)
    fs.put(bad, "bkt/in/bad", recursive=True)
    cfg = write(
        tmp_path,
        {
            "merge_method": "linear",
            "storage_options": {"s3://": s3},
            "models": [
                {"model": "s3://bkt/in/ft1", "parameters": {"weight": 1.0}},
                {"model": "s3://bkt/in/bad", "parameters": {"weight": 1.0}},
            ],
        },
    )
    rc, _, err = run_json(["run", cfg, "s3://bkt/out", *COMMON], capsys)
    assert rc == 2 and "NaN" in err
    names = {p.rsplit("/", 1)[-1] for p in fs.ls("bkt/out")}
    assert "_SUCCESS" not in names and not any(n.startswith("model-") for n in names)
    rc, s, err = run_json(["run", cfg, "s3://bkt/out", *COMMON, "--allow-nonfinite"], capsys)
    assert rc == 0, err
    assert 0 < s["reused_jobs"] < s["jobs"]
    local = tmp_path / "local"
    assert run_json(["run", cfg, str(local), *COMMON, "--allow-nonfinite"], capsys)[0] == 0
    assert {n: fs.cat_file(f"bkt/out/{n}") for n in shard_bytes(str(local))} == shard_bytes(
        str(local)
    )
    assert not fs.exists("bkt/out/.raymerge/uploads.json")
    uploads = fs.call_s3("list_multipart_uploads", Bucket="bkt").get("Uploads", [])
    assert uploads == []  # nothing left dangling


def test_worker_killed_mid_task_is_retried(tmp_path, family, ray_session, capsys):
    import ray

    import tests.chaos
    from raymerge.config import load_config
    from raymerge.options import RunOptions
    from raymerge.pipeline import RunHooks, run_merge

    ray.cloudpickle.register_pickle_by_value(tests.chaos)  # the workers need not import tests
    marker = tmp_path / "killed"
    cfg = write(
        tmp_path,
        {
            "merge_method": "task_arithmetic",
            "base_model": family[0],
            "models": [
                {"model": family[1], "parameters": {"weight": 0.5}},
                {"model": family[2], "parameters": {"weight": 0.5}},
            ],
        },
    )
    out, ref = tmp_path / "out", tmp_path / "ref"
    hooks = RunHooks(job_fault=tests.chaos.KillOnce(str(marker)))
    s = run_merge(load_config(cfg), str(out), RunOptions(shard_size=60_000), hooks)
    assert marker.exists() and s["retries"] >= 1
    assert run_json(["run", cfg, str(ref), "--shard-size", "60KB"], capsys)[0] == 0
    assert shard_bytes(str(out)) == shard_bytes(str(ref))
    attempts = [r["attempt"] for r in pq.read_table(out / "manifest.parquet").to_pylist()]
    assert max(attempts) == 2


@pytest.mark.parametrize(
    ("method", "params", "sizing"),
    [
        ("task_arithmetic", {"weight": 0.5}, ["--job-bytes", "64KiB"]),
        # chunked whole-tensor statistics: kept chunks must still feed the TIES thresholds
        ("ties", {"weight": 0.5, "density": 0.4}, ["--job-memory", "34MiB"]),
    ],
)
def test_driver_sigkilled_then_rerun_resumes(tmp_path, wide_family, capsys, method, params, sizing):
    """The real thing: `raymerge run` (own local Ray) killed with SIGKILL, then run again."""
    cfg = write(
        tmp_path,
        {
            "merge_method": method,
            "base_model": wide_family[0],
            "models": [{"model": m, "parameters": params} for m in wide_family[1:]],
        },
    )
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "tests.chaos",
        "run",
        cfg,
        str(out),
        "--num-cpus",
        "1",
        "--in-flight",
        "1",
        *sizing,
        "--ledger-interval",
        "0",
        "--no-progress",
        "--json",
    ]
    proc = subprocess.Popen(  # the driver SIGKILLs itself after 3 recorded jobs
        [*args, "--kill-driver-after", "3"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the local Ray it started
    except ProcessLookupError:
        pass
    time.sleep(1)
    assert not (out / "_SUCCESS").exists() and not list(out.glob("model-*"))
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["reused_jobs"] >= 3 and summary["reused_jobs"] < summary["jobs"]
    ref = tmp_path / "ref"
    assert (
        main(["run", cfg, str(ref), "--no-progress", "--job-bytes", "64KiB", "--num-cpus", "1"])
        == 0
    )
    capsys.readouterr()
    assert shard_bytes(str(out)) == shard_bytes(str(ref))
