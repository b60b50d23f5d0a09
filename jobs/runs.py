"""Dated run folders under an output root, for nightly merges.

Layout (local folder or any fsspec URL, e.g. ``s3://bucket/nightly``)::

    ROOT/LATEST                               text: the name of the newest verified run
    ROOT/20261127-1a2b3c4d/                   a raymerge output (shards, manifest, _SUCCESS)
    ROOT/20261127-1a2b3c4d/.raymerge/nightly.json   the input fingerprint it was merged from

A run is named ``<UTC date>-<fingerprint8>``; the fingerprint is a sha256 over the config hash,
the shard size and every input shard's size and ETag/mtime (headers and object metadata only:
no tensor bytes are read). LATEST only ever names a verified run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

from raymerge.config import MergeConfig
from raymerge.io.files import write_small
from raymerge.io.reader import ModelLayout
from raymerge.output import SUCCESS
from raymerge.storage import Location

LATEST = "LATEST"
RECORD = ".raymerge/nightly.json"
RUN_RE = re.compile(r"^(\d{8})-([0-9a-f]{8})$")


def fingerprint(config_hash: str, inputs: list[dict[str, Any]], shard_size: int | None) -> str:
    """sha256 hex of what determines a nightly output: config, shard size, input identities."""
    body = {"config_hash": config_hash, "shard_size": shard_size, "inputs": inputs}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def input_fingerprint(
    cfg: MergeConfig, layouts: list[ModelLayout], shard_size: int | None
) -> tuple[str, list[dict[str, Any]]]:
    """(sha256 hex, the per-input fingerprints it covers) from already-read headers/listings."""
    inputs = [lay.fingerprint() for lay in layouts]
    return fingerprint(cfg.hash(), inputs, shard_size), inputs


def run_name(fp: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.astimezone(dt.timezone.utc):%Y%m%d}-{fp[:8]}"


def read_text(loc: Location) -> str | None:
    try:
        return loc.fs.cat_file(loc.path).decode().strip()
    except FileNotFoundError:
        return None


def read_latest(root: Location) -> str | None:
    """The run LATEST names, or None (missing, empty or not a run name)."""
    name = read_text(root.child(LATEST))
    return name if name and RUN_RE.match(name) else None


def write_latest(root: Location, run: str) -> None:
    """Point LATEST at ``run``: one PUT on object stores, temp + rename locally."""
    write_small(root, LATEST, f"{run}\n".encode())


def read_record(root: Location, run: str) -> dict[str, Any] | None:
    text = read_text(root.child(run).child(RECORD))
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def write_record(root: Location, run: str, record: dict[str, Any]) -> None:
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    write_small(root.child(run), RECORD, data)


def is_complete(root: Location, run: str) -> bool:
    return root.fs.exists(root.child(run).child(SUCCESS).path)


def list_runs(root: Location) -> list[str]:
    """Run folder names under ``root`` (``YYYYMMDD-xxxxxxxx``), oldest first.

    Same-day runs are ordered by the time their record was written (or their raymerge run
    started); a run never looked at sorts first among its day.
    """
    try:
        root.fs.invalidate_cache(root.path)
        entries = root.fs.ls(root.path, detail=True)
    except FileNotFoundError:
        return []
    names = [
        e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"
    ]
    runs = [n for n in names if RUN_RE.match(n)]

    def when(run: str) -> float:
        rec = read_record(root, run)
        if rec and "finished" in rec:
            return float(rec["finished"])
        try:
            started = json.loads(root.fs.cat_file(root.child(run).child(".raymerge/run.json").path))
            return float(started.get("started", 0.0))
        except (FileNotFoundError, ValueError):
            return 0.0

    return sorted(runs, key=lambda r: (r[:8], when(r)))


def pick_run(root: Location, fp: str, now: dt.datetime | None = None) -> str:
    """The folder to merge into: today's ``<date>-<fp8>``, unless an unfinished attempt for the
    same inputs that is newer than LATEST exists (an interrupted run resumed after midnight)."""
    today = run_name(fp, now)
    latest = read_latest(root)
    for run in reversed(list_runs(root)):
        if (
            run.endswith(f"-{fp[:8]}")
            and run != today
            and (latest is None or run[:8] >= latest[:8])
            and run != latest
            and not is_complete(root, run)
        ):
            return run
    return today


def prune(root: Location, keep: int, latest: str) -> list[str]:
    """Delete all but the ``keep`` newest complete runs (LATEST always stays), and unfinished
    runs older than LATEST. Call only after LATEST moved. Returns the deleted names."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    runs = list_runs(root)
    order = {r: i for i, r in enumerate(runs)}
    complete = [r for r in runs if is_complete(root, r)]
    keep_set = set(complete[-keep:]) | {latest}
    doomed = [
        r
        for r in runs
        if r not in keep_set and (r in complete or order[r] < order.get(latest, len(runs)))
    ]
    for r in doomed:
        root.fs.rm(root.child(r).path, recursive=True)
    if doomed:
        root.fs.invalidate_cache(root.path)
    return doomed
