"""jobs/merge.py and jobs/nightly.py in-process on local folders (the Ray job API is covered by
test_jobs_e2e.py): fingerprints, LATEST, pruning, resuming, failures."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from jobs import merge, nightly, runs
from jobs.common import parse_run_args
from raymerge.config import load_config
from raymerge.pipeline import load_inputs
from raymerge.storage import resolve

SHARD = "model-00001-of-00003.safetensors"


def copy_family(family: list[str], dest) -> list[str]:
    out = []
    for p in family:
        q = os.path.join(dest, os.path.basename(p))
        shutil.copytree(p, q)
        out.append(q)
    return out


def config(refs: list[str], weight: float = 0.5) -> dict:
    base, ft1, ft2 = refs
    return {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [
            {"model": ft1, "parameters": {"weight": weight}},
            {"model": ft2, "parameters": {"weight": 1 - weight}},
        ],
    }


def fp_of(cfg_dict: dict, shard_size: int | None = 5_000_000_000) -> str:
    cfg = load_config(cfg_dict)
    return runs.input_fingerprint(cfg, load_inputs(cfg), shard_size)[0]


def test_fingerprint_follows_inputs_config_and_shard_size(tmp_path, family):
    refs = copy_family(family, tmp_path)
    cfg = config(refs)
    fp0 = fp_of(cfg)
    assert len(fp0) == 64 and fp_of(cfg) == fp0
    # storage options are not part of it (rotating credentials must not trigger a merge)
    assert fp_of({**cfg, "storage_options": {"s3://": {"key": "k", "secret": "s"}}}) == fp0
    shard = os.path.join(refs[1], SHARD)
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    fp1 = fp_of(cfg)
    assert fp1 != fp0
    data = open(os.path.join(refs[2], SHARD), "rb").read()
    assert len(data) == st.st_size
    with open(shard, "wb") as f:  # same size, other bytes (a local file's identity is its
        f.write(data)  # size + mtime; on S3 the ETag changes with the bytes)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    fp2 = fp_of(cfg)
    assert fp2 not in (fp0, fp1)
    assert fp_of(config(refs, weight=0.3)) != fp2
    assert fp_of(cfg, shard_size=100_000) != fp2


def _fake_run(root, name: str, *, complete: bool, finished: float | None = None) -> None:
    folder = os.path.join(root, name, ".raymerge")
    os.makedirs(folder)
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump({"config_hash": "x", "started": (finished or 0) - 1}, f)
    if complete:
        open(os.path.join(root, name, "_SUCCESS"), "w").write("{}")
    if finished is not None:
        with open(os.path.join(folder, "nightly.json"), "w") as f:
            json.dump({"fingerprint": name[-8:] * 8, "finished": finished}, f)


def test_prune_keeps_the_newest_complete_runs_and_latest(tmp_path):
    root_dir = tmp_path / "root"
    for i, day in enumerate(["20260101", "20260102", "20260103", "20260104"]):
        _fake_run(root_dir, f"{day}-{i:08x}", complete=True, finished=1000.0 + i)
    # two runs on one day: ordered by when they finished, not by their hex suffix
    _fake_run(root_dir, "20260105-ffffffff", complete=True, finished=2000.0)
    _fake_run(root_dir, "20260105-00000000", complete=True, finished=2001.0)
    _fake_run(root_dir, "20260101-dead0000", complete=False)  # failed long ago
    _fake_run(root_dir, "20260106-beef0000", complete=False)  # unfinished, newer than LATEST
    os.makedirs(root_dir / "notes")  # not a run: never touched
    (root_dir / "README.txt").write_text("hi")
    root = resolve(str(root_dir))
    assert runs.list_runs(root)[-3:] == [
        "20260105-ffffffff",
        "20260105-00000000",
        "20260106-beef0000",
    ]
    runs.write_latest(root, "20260105-00000000")
    assert runs.read_latest(root) == "20260105-00000000"
    deleted = runs.prune(root, 2, "20260105-00000000")
    assert sorted(deleted) == [
        "20260101-00000000",
        "20260101-dead0000",
        "20260102-00000001",
        "20260103-00000002",
        "20260104-00000003",
    ]
    assert sorted(os.listdir(root_dir)) == sorted(
        [
            "LATEST",
            "README.txt",
            "notes",
            "20260105-ffffffff",
            "20260105-00000000",
            "20260106-beef0000",
        ]
    )
    # LATEST (e.g. rolled back by hand) stays even when it is not among the newest
    assert runs.prune(root, 1, "20260105-ffffffff") == []
    assert runs.prune(root, 1, "20260105-00000000") == ["20260105-ffffffff"]
    with pytest.raises(ValueError):
        runs.prune(root, 0, "20260105-ffffffff")


def test_pick_run_resumes_an_interrupted_attempt_after_midnight(tmp_path):
    fp = "ab" * 32
    root = resolve(str(tmp_path / "root"))
    day1 = dt.datetime(2026, 1, 1, 23, 59, tzinfo=dt.timezone.utc)
    day2 = dt.datetime(2026, 1, 2, 0, 1, tzinfo=dt.timezone.utc)
    assert runs.pick_run(root, fp, day1) == "20260101-abababab"
    _fake_run(tmp_path / "root", "20260101-abababab", complete=False)
    assert runs.pick_run(root, fp, day2) == "20260101-abababab"  # same folder: raymerge resumes
    open(tmp_path / "root" / "20260101-abababab" / "_SUCCESS", "w").write("{}")
    assert runs.pick_run(root, fp, day2) == "20260102-abababab"
    # a local time zone does not shift the UTC date
    est = dt.timezone(dt.timedelta(hours=-5))
    assert runs.run_name(fp, dt.datetime(2026, 1, 1, 21, 0, tzinfo=est)) == "20260102-abababab"


def nan_copy(src_shard: str, dest_shard: str) -> None:
    """Same tensors, shapes and dtypes, one NaN: headers pass, the merge itself fails."""
    tensors = load_file(src_shard)
    name = sorted(tensors)[0]
    t = tensors[name].clone()
    t.view(-1)[0] = float("nan")
    tensors[name] = t
    save_file(tensors, dest_shard, metadata={"format": "pt"})


def test_nightly_merges_once_skips_unchanged_and_keeps_latest_on_failure(
    tmp_path, family, ray_session, capsys
):
    refs = copy_family(family, tmp_path)
    cfg_path = tmp_path / "merge.yaml"
    cfg_path.write_text(json.dumps(config(refs)))
    root_dir = tmp_path / "nightly"
    argv = [str(cfg_path), "--output-root", str(root_dir), "--keep", "3", "--no-progress"]
    argv += ["--shard-size", "100KB"]

    assert nightly.main(argv) == 0
    out = capsys.readouterr().out
    first = (root_dir / "LATEST").read_text().strip()
    assert runs.RUN_RE.match(first) and f"LATEST -> {first}" in out and "verify OK" in out
    rec = json.loads((root_dir / first / ".raymerge" / "nightly.json").read_text())
    assert rec["fingerprint"][:8] == first[-8:]

    assert nightly.main(argv) == 0
    out = capsys.readouterr().out
    assert "inputs unchanged" in out and "merging" not in out

    # a new fine-tune with a NaN: fingerprint changes, the merge fails, LATEST does not move
    shard = os.path.join(refs[1], SHARD)
    nan_copy(shard, shard)
    assert nightly.main(argv) == 2
    cap = capsys.readouterr()
    assert "NaN" in cap.err and "Traceback" not in cap.err
    assert (root_dir / "LATEST").read_text().strip() == first
    failed = sorted(set(os.listdir(root_dir)) - {"LATEST", first})
    assert len(failed) == 1 and not (root_dir / failed[0] / "_SUCCESS").exists()
    # rerunning the same command picks the same folder
    assert nightly.main(argv) == 2
    capsys.readouterr()
    assert sorted(os.listdir(root_dir)) == sorted(["LATEST", first, failed[0]])

    # fixed input (other valid bytes): a new run, LATEST moves, the failed leftover is removed
    with open(shard, "wb") as f:
        f.write(open(os.path.join(refs[2], SHARD), "rb").read())
    assert nightly.main(argv) == 0
    capsys.readouterr()
    second = (root_dir / "LATEST").read_text().strip()
    assert second not in (first, failed[0])
    assert sorted(os.listdir(root_dir)) == sorted(["LATEST", first, second])


def test_merge_job_in_process(tmp_path, family, ray_session, capsys):
    cfg_path = tmp_path / "merge.yaml"
    cfg_path.write_text(json.dumps(config(family)))
    out = tmp_path / "out"
    assert merge.main([str(cfg_path), str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "verify OK" in text and (out / "_SUCCESS").exists()
    # a user error: one paragraph on stderr, exit 2, nothing written
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**config(family), "merge_method": "nope"}))
    assert merge.main([str(bad), str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown merge method 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "out2").exists()


def test_ray_address_becomes_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert parse_run_args(["c.yaml", "out"], "x").address == "10.0.0.5:6379"
    assert parse_run_args(["c.yaml", "out", "--address", "a:1"], "x").address == "a:1"
    monkeypatch.delenv("RAY_ADDRESS")
    assert parse_run_args(["c.yaml", "out"], "x").address is None


def test_nan_copy_keeps_the_layout(tmp_path, family):
    src = os.path.join(family[1], SHARD)
    dst = str(tmp_path / SHARD)
    nan_copy(src, dst)
    assert os.path.getsize(dst) == os.path.getsize(src)
    assert any(torch.isnan(t.float()).any() for t in load_file(dst).values())
