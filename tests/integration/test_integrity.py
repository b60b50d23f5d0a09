"""`_SUCCESS` only ever stands beside the right model: inputs changed during or between runs,
hung clusters, non-finite results, outputs that overlap inputs, concurrent runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

import tests.chaos
from raymerge.cli import main
from raymerge.config import load_config
from raymerge.errors import ClusterError, InputError, OutputError, RaymergeError
from raymerge.options import ExecOptions, RunOptions
from raymerge.pipeline import RunHooks, run_merge
from tests.helpers import shard_bytes, task_arithmetic_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _hooks_by_value():
    ray.cloudpickle.register_pickle_by_value(tests.chaos)  # workers need not import tests/


def private_family(tmp_path, family) -> list[str]:
    """A copy of the session family this test may change."""
    out = []
    for src in family:
        dst = tmp_path / "models" / Path(src).name
        shutil.copytree(src, dst)
        out.append(str(dst))
    return out


def cfg_of(refs, **extra):
    body = task_arithmetic_config(refs)
    body.update(extra)
    return load_config(body)


def small_jobs(**kw) -> RunOptions:
    return RunOptions(job_bytes=16 << 10, execution=ExecOptions(progress=False), **kw)


def nothing_committed(out: Path) -> None:
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("model-*.safetensors"))


@pytest.mark.parametrize("how", ["same-size", "longer-header"])
def test_a_local_input_rewritten_mid_run_fails_before_commit(tmp_path, family, ray_session, how):
    refs = private_family(tmp_path, family)
    shard = sorted(Path(refs[1]).glob("model-*.safetensors"))[0]
    hook = tests.chaos.RewriteOnce(str(tmp_path / "marker"), str(shard), how)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"changed since planning") as ei:
        run_merge(cfg_of(refs), str(out), small_jobs(), RunHooks(job_fault=hook))
    assert shard.name in str(ei.value)
    nothing_committed(out)


def test_a_side_file_edited_mid_run_at_the_same_size_is_not_committed(
    tmp_path, family, ray_session
):
    """config.json rewritten after planning, same size (as a `rope_theta` edit would be): the
    commit reads the side files from the planned version only, so no _SUCCESS."""
    refs = private_family(tmp_path, family)
    hook = tests.chaos.RewriteOnce(
        str(tmp_path / "marker"), str(Path(refs[0]) / "config.json"), "digit"
    )
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"config.json: changed since planning"):
        run_merge(cfg_of(refs), str(out), small_jobs(), RunHooks(job_fault=hook))
    assert not (out / "_SUCCESS").exists()


@pytest.mark.parametrize("reader", ["s3fs", "obstore"])
def test_an_s3_object_replaced_mid_run_fails_before_commit(
    tmp_path, family, ray_session, s3, reader
):
    from raymerge.storage import resolve

    fs = resolve("s3://fam", {"s3://": s3}).fs
    fs.mkdir("fam")
    for p in family:
        fs.put(p, f"fam/{Path(p).name}", recursive=True)
    refs = [f"s3://fam/{Path(p).name}" for p in family]
    key = f"fam/ft1/{sorted(p.name for p in Path(family[1]).glob('model-*'))[0]}"
    hook = tests.chaos.ReplaceS3Once(str(tmp_path / "marker"), dict(s3), key)
    cfg = load_config({**task_arithmetic_config(refs), "storage_options": {"s3://": s3}})
    opts = small_jobs()
    opts.execution.s3_reader = reader
    ref = tmp_path / "ref"
    run_merge(cfg, str(ref), opts)  # unchanged inputs: the same bytes through either reader
    assert shard_bytes(str(ref)) == shard_bytes(str(run_local(tmp_path, family)))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"changed since planning \(its ETag is no longer"):
        run_merge(cfg, str(out), opts, RunHooks(job_fault=hook))
    nothing_committed(out)


def run_local(tmp_path, family) -> Path:
    out = tmp_path / "local-ref"
    if not out.exists():
        run_merge(cfg_of(family), str(out), small_jobs())
    return out


def test_resume_and_complete_only_while_the_inputs_are_unchanged(tmp_path, family, ray_session):
    """An interrupted run whose input then changed is not resumed (its jobs mix versions); a
    finished one is not "already complete"; --overwrite merges the new version; `verify
    --inputs` tells whether the inputs are still what the output was made from."""
    refs = private_family(tmp_path, family)
    cfg = cfg_of(refs)
    out = tmp_path / "out"
    assert run_merge(cfg, str(out), small_jobs())["jobs"] > 1
    assert run_merge(cfg, str(out), small_jobs())["already_complete"]
    assert main(["verify", str(out), "--inputs"]) == 0
    shard = sorted(Path(refs[2]).glob("model-*.safetensors"))[-1]
    tests.chaos.RewriteOnce(str(tmp_path / "m1"), str(shard))(None, 1)  # the fine-tune updated
    assert main(["verify", str(out)]) == 0  # the output itself is intact
    assert main(["verify", str(out), "--inputs"]) == 2  # but no longer what the inputs give
    with pytest.raises(OutputError, match=r"finished merge of this config made from other"):
        run_merge(cfg, str(out), small_jobs())
    fresh = run_merge(cfg, str(out), small_jobs(overwrite=True))
    assert fresh["reused_jobs"] == 0 and not fresh.get("already_complete")
    ref = tmp_path / "ref"
    run_merge(cfg, str(ref), small_jobs())
    assert shard_bytes(str(out)) == shard_bytes(str(ref))


def test_an_interrupted_run_is_not_resumed_after_an_input_changed(tmp_path, family):
    refs = private_family(tmp_path, family)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(task_arithmetic_config(refs)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "tests.chaos", "run", str(cfg), str(out), "--num-cpus", "1",
            "--in-flight", "1", "--job-bytes", "16KiB", "--ledger-interval", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.run([*args, "--kill-driver-after", "2"], cwd=REPO, capture_output=True,
                          timeout=300, start_new_session=True)  # fmt: skip
    assert proc.returncode < 0  # killed
    shard = sorted(Path(refs[1]).glob("model-*.safetensors"))[0]
    tests.chaos.RewriteOnce(str(tmp_path / "m"), str(shard))(None, 1)
    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode != 0
    assert "an interrupted run of this config made from other versions" in rerun.stderr
    nothing_committed(out)


def test_a_job_that_makes_no_progress_stops_the_run(tmp_path, family, ray_session):
    opts = small_jobs()
    opts.execution.stall_timeout = 3
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"no job or statistics task finished for 3 s"):
        run_merge(cfg_of(family), str(tmp_path / "out"), opts, RunHooks(tests.chaos.SleepForever()))
    assert time.monotonic() - t0 < 60
    nothing_committed(tmp_path / "out")


def test_a_stalled_in_process_run_stops_too(tmp_path, family):
    """The in-process executor (no Ray) bounds its wait like the Ray one: a job blocked in a
    read that never returns stops the run (exit 1, the blocked thread is not joined)."""
    opts = small_jobs()
    opts.execution.executor = "local"
    opts.execution.stall_timeout = 3
    release = tmp_path / "release"
    t0 = time.monotonic()
    try:
        with pytest.raises(ClusterError, match=r"no job or statistics task finished for 3 s") as ei:
            hook = RunHooks(tests.chaos.SleepUntil(str(release)))
            run_merge(cfg_of(family), str(tmp_path / "out"), opts, hook)
        assert ei.value.stuck and time.monotonic() - t0 < 30
    finally:
        release.touch()  # let the blocked threads finish
    nothing_committed(tmp_path / "out")


def test_zipit_waits_are_bounded(ray_session):
    """The ZipIt stage's waits (statistics steps, reduces, matchers) stop with one clear error
    when nothing finishes for the stall timeout; matching waits at least twice the slowest
    space's estimate."""
    from raymerge.execution.cluster import bounded_get
    from raymerge.zipit.budget import SpaceCost, ZipBudget, matching_timeout

    @ray.remote
    def hang():
        time.sleep(600)

    @ray.remote
    def quick(x):
        return x

    assert bounded_get([quick.remote(1), quick.remote(2)], 3, "quick") == [1, 2]
    t0 = time.monotonic()
    with pytest.raises(
        ClusterError, match=r"no zipit matching task finished for 2 s \(1 waiting\)"
    ):
        bounded_get([quick.remote(1), hang.remote()], 2, "zipit matching task")
    assert time.monotonic() - t0 < 30
    budget = ZipBudget(1, {}, (SpaceCost("mlp.0", 8, 8, 1, 1000.0),), 1)
    assert matching_timeout(1800, budget) == 2000.0
    assert matching_timeout(1800, None) == 1800 and matching_timeout(0, budget) == 0.0


def test_connecting_to_a_silent_cluster_times_out_with_exit_1(tmp_path, family):
    """A GCS address that accepts connections and never answers: exit 1 within the timeout,
    saying what was waited for."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    threading.Thread(
        target=lambda: [conns.append(srv.accept()) for _ in range(64)], daemon=True
    ).start()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(task_arithmetic_config(family)))
    address = f"127.0.0.1:{srv.getsockname()[1]}"
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "raymerge", "run", str(cfg), str(tmp_path / "out"),
         "--address", address, "--connect-timeout", "4", "--no-progress"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"timed out after 4 s waiting for the Ray cluster at {address}" in r.stderr
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in r.stderr
    nothing_committed(tmp_path / "out")


def test_an_overflowing_result_is_refused_unless_allowed(tmp_path, family, ray_session):
    cfg = cfg_of(family, parameters={"lambda": 1e308})
    with pytest.raises(RaymergeError, match=r"produced NaN or Inf values from finite"):
        run_merge(cfg, str(tmp_path / "out"), small_jobs())
    nothing_committed(tmp_path / "out")
    run_merge(cfg, str(tmp_path / "ok"), small_jobs(allow_nonfinite=True))
    assert (tmp_path / "ok" / "_SUCCESS").exists()


def test_zero_sum_weights_are_a_config_error_before_any_data(tmp_path, family, capsys):
    body = {"merge_method": "linear", "models": [
        {"model": family[1], "parameters": {"weight": 1.0}},
        {"model": family[2], "parameters": {"weight": -1.0}}]}  # fmt: skip
    p = tmp_path / "c.json"
    p.write_text(json.dumps(body))
    assert main(["run", str(p), str(tmp_path / "out")]) == 2
    assert "sum to zero, so normalize: true cannot divide" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_overwrite_never_touches_an_input_and_removes_stale_shards(tmp_path, family, ray_session):
    refs = private_family(tmp_path, family)
    before = {p: Path(p).joinpath("config.json").read_bytes() for p in refs}
    for out in (refs[0], str(Path(refs[0]).parent)):
        with pytest.raises(OutputError, match=r"input model folder"):
            run_merge(cfg_of(refs), out, small_jobs(overwrite=True))
    assert {p: Path(p).joinpath("config.json").read_bytes() for p in refs} == before
    out = tmp_path / "out"
    run_merge(cfg_of(refs), str(out), RunOptions(shard_size=20_000, overwrite=True))
    many = sorted(p.name for p in out.glob("model-*.safetensors"))
    run_merge(cfg_of(refs, parameters={"lambda": 0.5}), str(out), small_jobs(overwrite=True))
    now = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(many) > 1 and now == ["model-00001-of-00001.safetensors"]  # the old ones: gone
    assert main(["verify", str(out)]) == 0  # no stray shard of the earlier layout


def test_a_second_run_on_a_leased_out_is_refused(tmp_path, family, ray_session):
    from raymerge.io.lease import Lease
    from raymerge.storage import resolve

    out = tmp_path / "out"
    holder = Lease(resolve(str(out), output=True))
    holder.acquire()
    try:
        with pytest.raises(OutputError, match=r"in use by another raymerge run"):
            run_merge(cfg_of(family), str(out), small_jobs(overwrite=True))
    finally:
        holder.release()
    run_merge(cfg_of(family), str(out), small_jobs())
    assert (out / "_SUCCESS").exists() and not (out / ".raymerge" / "lease.json").exists()


def test_verify_checks_side_files_stray_shards_and_the_pinned_manifest(
    tmp_path, family, ray_session
):
    out = tmp_path / "out"
    run_merge(cfg_of(family), str(out), small_jobs())
    assert main(["verify", str(out)]) == 0

    def broken(edit, expect, capsys_err=None):
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, copy)
        edit(copy)
        r = subprocess.run([sys.executable, "-m", "raymerge", "verify", str(copy)],
                           capture_output=True, text=True, cwd=REPO)  # fmt: skip
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr

    def tamper(name, data):
        return lambda d: (d / name).write_bytes(data)

    conf = json.loads((out / "config.json").read_text())
    broken(tamper("config.json", json.dumps({**conf, "vocab_size": 7}).encode()),
           "config.json: changed since the merge")  # fmt: skip
    broken(lambda d: shutil.copy(d / "model-00001-of-00001.safetensors",
                                 d / "model-00002-of-00002.safetensors"), "holds files the manifest does not list")  # fmt: skip
    broken(
        tamper("manifest.parquet", b"PAR1 garbage PAR1"),
        "does not match the checksum _SUCCESS pins",
    )
    broken(lambda d: ((d / "_SUCCESS").write_text('{"summary": {}}'),
                      (d / "manifest.parquet").write_bytes(b"garbage")),
           "manifest.parquet: not a Parquet file")  # fmt: skip
    broken(tamper("model.safetensors.index.json", b"{not json"), "index.json: not valid JSON")


def test_disk_full_mid_run_says_so_and_removes_the_staged_output(tmp_path, family, ray_session):
    out = tmp_path / "out"
    hook = tests.chaos.FullDiskOnce(str(tmp_path / "marker"), str(out / ".raymerge" / "staging"))
    with pytest.raises(OutputError, match=r"disk full writing bytes"):
        run_merge(cfg_of(family), str(out), small_jobs(), RunHooks(job_fault=hook))
    nothing_committed(out)
    assert not (out / ".raymerge" / "staging").exists()


def test_plan_shows_the_job_count_of_the_run(tmp_path, family, ray_session, capsys):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(task_arithmetic_config(family)))
    args = ["--job-bytes", "16KiB"]
    assert main(["plan", str(p), *args, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["jobs"]
    assert main(["run", str(p), str(tmp_path / "out"), *args, "--json", "--no-progress"]) == 0
    ran = json.loads(capsys.readouterr().out)["jobs"]
    assert planned == ran > 1


def test_a_fifo_shard_is_refused_without_hanging(tmp_path, family, capsys):
    refs = private_family(tmp_path, family)
    shard = sorted(Path(refs[1]).glob("model-*.safetensors"))[0]
    shard.unlink()
    os.mkfifo(shard)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(task_arithmetic_config(refs)))
    assert main(["plan", str(p)]) == 2
    assert "are not regular files (a FIFO" in capsys.readouterr().err


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    assert "holds no earlier raymerge demo" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me" and os.listdir(tmp_path) == [
        "notes.txt"
    ]
