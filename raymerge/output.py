"""Claiming an output location: refuse what holds something else, record this run.

Order of visibility on the output (nothing looks complete before it is):

1. the lease (:mod:`raymerge.io.lease`) is taken, then ``.raymerge/run.json`` (config hash,
   job layout, input fingerprints, run id) claims the folder; ``_SUCCESS`` of an earlier run is
   removed first;
2. jobs write into staging files / open multipart uploads (never a final shard name);
3. the commit (:mod:`raymerge.commit`) makes everything visible, ``_SUCCESS`` last.

A rerun resumes (or finds the run complete) only when the config, the job layout *and* the input
fingerprints are the same; otherwise it is refused unless ``--overwrite``. OUT may never be, hold
or sit inside an input model folder, with or without ``--overwrite``; ``--overwrite`` replaces
only what looks like a model output.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raymerge import __version__
from raymerge.errors import InputError, OutputError
from raymerge.io.files import write_json
from raymerge.io.fingerprint import FileFingerprint, differences
from raymerge.io.reader import INDEX_FILE, SIDE_FILES
from raymerge.storage import Location

RUN_FILE = ".raymerge/run.json"
SUCCESS = "_SUCCESS"
# what a model output (raymerge's, mergekit's, save_pretrained's) holds: --overwrite replaces it
_OUTPUT_NAMES = {".raymerge", SUCCESS, "README.md", "manifest.parquet", ".gitattributes",
                 "mergekit_config.yml", INDEX_FILE, *SIDE_FILES}  # fmt: skip
_OUTPUT_PATTERN = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors|.*\.tiktoken)$")


def is_output_file(name: str) -> bool:
    """Is ``name`` a file a model output holds (what --overwrite may replace)?"""
    return name in _OUTPUT_NAMES or bool(_OUTPUT_PATTERN.match(name))


_CHECKPOINT = re.compile(r"model_\d+")  # a decoder partial zip's per-model folder
TMP_FILE = re.compile(r"^.+\.tmp-\d+$")  # a crashed small-file write's temp file


def is_checkpoint_folder(out: Location, name: str) -> bool:
    """Is ``OUT/name`` a raymerge partial zip's checkpoint folder (what --overwrite may replace,
    like a model output's files): named ``model_N``, holding raymerge's manifest and nothing but
    model-output files? A downloaded model in a ``model_0`` folder has no manifest: not ours."""
    sub = out.child(name)
    if not _CHECKPOINT.fullmatch(name) or not out.fs.isdir(sub.path):
        return False
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in out.fs.ls(sub.path, detail=False)]
    ours = "manifest.parquet" in names
    return ours and all(is_output_file(n) or TMP_FILE.match(n) for n in names)


def unmark_checkpoints(out: Location) -> None:
    """Remove the ``_SUCCESS`` of every checkpoint folder in OUT (a claim that is not already
    complete: no checkpoint of an earlier run may look complete while this one runs)."""
    fs = out.fs
    if not fs.exists(out.path):
        return
    for entry in fs.ls(out.path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        marker = out.child(name).child(SUCCESS).path
        if is_checkpoint_folder(out, name) and fs.exists(marker):
            fs.rm(marker)


@dataclass
class Claim:
    run_id: str
    resume: bool  # same config, job layout and inputs as the interrupted run: keep its work
    complete: dict[str, Any] | None  # _SUCCESS of an identical finished run


def _same_place(out: Location, loc: Location) -> str | None:
    """How OUT overlaps input folder ``loc`` ("is", "holds", "is inside"), or None."""
    if out.protocol != loc.protocol:
        return None
    a, b = out.path.rstrip("/"), loc.path.rstrip("/")
    if out.is_local:
        a, b = os.path.realpath(a), os.path.realpath(b)
    if a == b:
        return "is"
    if b.startswith(a + "/"):
        return "holds"
    if a.startswith(b + "/"):
        return "is inside"
    return None


def check_not_an_input(out: Location, inputs: Sequence[Location]) -> None:
    """OUT is never an input model's folder, one that holds one, or one inside one."""
    for loc in inputs:
        how = _same_place(out, loc)
        if how is not None:
            raise OutputError(
                f"{out.url}: {how} the input model folder {loc.url}; writing there would "
                "replace or mix with that model's files (even with --overwrite). Choose another "
                "output folder"
            )


def _check_bucket(out: Location) -> None:
    fs = out.fs
    if out.is_local or not hasattr(fs, "split_path"):
        return
    bucket = fs.split_path(out.path)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise OutputError(f"{out.url}: bucket {bucket!r} does not exist") from None
    except PermissionError:
        raise OutputError(
            f"{out.url}: access to bucket {bucket!r} denied: the credentials were refused or "
            "lack permission (check the key, the endpoint and the bucket policy)"
        ) from None


def _changed_inputs(prev: dict[str, Any], inputs: list[dict[str, Any]]) -> list[str]:
    """Files whose fingerprint differs between the recorded run and now."""
    old = {m.get("model"): m.get("files", {}) for m in prev.get("inputs", [])}
    out = []
    for m in inputs:
        before = old.get(m["model"], {})
        for name, rec in m["files"].items():
            if name not in before:
                out.append(f"{m['model']}/{name} (new)")
                continue
            then, now = FileFingerprint.from_record(before[name]), FileFingerprint.from_record(rec)
            diff = differences(then, now)
            if diff:
                out.append(f"{m['model']}/{name} ({', '.join(diff)})")
    return out or ["the set of input files"]


def _ours(entry: str) -> bool:
    """raymerge's own folder (a lease, a run record, staging): not someone else's files."""
    return entry.rstrip("/").rsplit("/", 1)[-1] == ".raymerge"


def _refuse_foreign(out: Location, entries: list[str], prev: dict | None, overwrite: bool) -> None:
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
    if prev is None and not overwrite:
        raise OutputError(
            f"{out.url}: is not empty and holds no raymerge run; choose an empty folder or "
            "pass --overwrite"
        )
    foreign = sorted(n for n in names if not is_output_file(n) and not is_checkpoint_folder(out, n))
    if overwrite and foreign:
        raise OutputError(
            f"{out.url}: holds files that are not part of a model output ({foreign[:5]}); "
            "--overwrite only replaces a model output. Choose another folder"
        )


def inspect_output(out: Location, overwrite: bool) -> None:
    """Read-only checks before anything is written to OUT (not even the lease): the bucket
    exists and is ours to use; OUT is a folder, empty, or holds a raymerge run (or, with
    ``--overwrite``, only model-output files)."""
    fs = out.fs
    try:
        _check_bucket(out)
        if not fs.exists(out.path):
            return
        if not fs.isdir(out.path):
            raise OutputError(f"{out.url}: exists and is not a folder")
        entries = [e for e in fs.ls(out.path, detail=False) if not _ours(e)]
        if entries:
            prev = fs.exists(out.child(RUN_FILE).path)
            _refuse_foreign(out, entries, {} if prev else None, overwrite)
    except PermissionError as exc:
        raise OutputError(
            f"{out.url}: not accessible ({exc.strerror or type(exc).__name__})"
        ) from None
    except OSError as exc:
        if isinstance(exc, (OutputError, InputError)):
            raise
        raise OutputError(f"{out.url}: cannot use as output: {exc}") from None


def claim_output(
    out: Location,
    run_hash: str,
    layout: str,
    overwrite: bool,
    inputs: list[dict[str, Any]],
    inputs_digest: str,
) -> Claim:
    """Refuse an OUT that holds something else; record this run; say what may be resumed.

    Args:
        out: the output location (checked by :func:`inspect_output`; its lease is held).
        run_hash: the config's hash (with the shard size).
        layout: the job layout's hash (:func:`raymerge.ledger.plan_hash`).
        overwrite: replace an earlier output of another config or other inputs.
        inputs: every input's fingerprint records; ``inputs_digest``: their hash.
    """
    fs = out.fs
    try:
        entries = fs.ls(out.path, detail=False) if fs.exists(out.path) else []
        run_path = out.child(RUN_FILE).path
        prev = json.loads(fs.cat_file(run_path)) if entries and fs.exists(run_path) else None
        same = bool(prev) and prev.get("config_hash") == run_hash and not overwrite
        if prev and not overwrite and prev.get("config_hash") != run_hash:
            raise OutputError(
                f"{out.url}: holds a run of a different config (hash {prev.get('config_hash')}"
                f", this config {run_hash}); choose another folder or pass --overwrite"
            )
        success = out.child(SUCCESS).path
        if same and prev.get("inputs_digest") != inputs_digest:
            what = "a finished merge" if fs.exists(success) else "an interrupted run"
            changed = _changed_inputs(prev, inputs)
            raise OutputError(
                f"{out.url}: holds {what} of this config made from other versions of the inputs "
                f"(changed since: {'; '.join(changed[:5])}). Its bytes cannot be reused: pass "
                "--overwrite to merge the current inputs into it, or choose another folder"
            )
        if same and fs.exists(success):
            return Claim(prev.get("run_id", ""), False, json.loads(fs.cat_file(success)))
        if fs.exists(success):
            fs.rm(success)
        resume = same and prev.get("plan_hash") == layout
        run_id = uuid.uuid4().hex[:12]
        record = {
            "config_hash": run_hash,
            "plan_hash": layout,
            "inputs_digest": inputs_digest,
            "inputs": inputs,
            "run_id": run_id,
            "raymerge": __version__,
            "started": time.time(),
        }
        write_json(out, RUN_FILE, record)
        return Claim(run_id, resume, None)
    except PermissionError as exc:
        raise OutputError(
            f"{out.url}: not writable ({exc.strerror or type(exc).__name__})"
        ) from None
    except ValueError as exc:  # a garbage run record
        raise OutputError(f"{out.url}/{RUN_FILE}: not a raymerge run record ({exc})") from None
    except OSError as exc:
        if isinstance(exc, (OutputError, InputError)):
            raise
        raise OutputError(f"{out.url}: cannot use as output: {exc}") from None


__all__ = [
    "RUN_FILE",
    "SUCCESS",
    "Claim",
    "check_not_an_input",
    "claim_output",
    "inspect_output",
    "is_output_file",
]
