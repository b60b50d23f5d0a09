"""Claiming an output location: refuse what holds something else, record this run.

Order of visibility on the output (nothing looks complete before it is):

1. ``.raymerge/run.json`` (config hash, run id) claims the folder; ``_SUCCESS`` of an earlier run
   of the same config is removed first;
2. jobs write into staging files / open multipart uploads (never a final shard name);
3. the commit (:mod:`raymerge.commit`) makes everything visible, ``_SUCCESS`` last.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from raymerge import __version__
from raymerge.errors import InputError, OutputError
from raymerge.io.files import write_json
from raymerge.storage import Location

RUN_FILE = ".raymerge/run.json"
SUCCESS = "_SUCCESS"


@dataclass
class Claim:
    run_id: str
    resume: bool  # same config and job layout as the interrupted run in OUT: try to keep its work
    complete: dict[str, Any] | None  # _SUCCESS of an identical finished run


def claim_output(out: Location, run_hash: str, layout: str, overwrite: bool) -> Claim:
    """Refuse an OUT that holds something else; record this run; say what may be resumed."""
    fs = out.fs
    try:
        if not out.is_local:
            bucket = fs.split_path(out.path)[0] if hasattr(fs, "split_path") else None
            if bucket and not fs.exists(bucket):
                raise OutputError(f"{out.url}: bucket {bucket!r} does not exist")
        exists = fs.exists(out.path)
        if exists and not fs.isdir(out.path):
            raise OutputError(f"{out.url}: exists and is not a folder")
        entries = fs.ls(out.path, detail=False) if exists else []
        run_path = out.child(RUN_FILE).path
        prev = json.loads(fs.cat_file(run_path)) if entries and fs.exists(run_path) else None
        if entries and not overwrite:
            if prev is None:
                raise OutputError(
                    f"{out.url}: is not empty and holds no raymerge run; choose an empty "
                    "folder or pass --overwrite"
                )
            if prev.get("config_hash") != run_hash:
                raise OutputError(
                    f"{out.url}: holds a run of a different config (hash {prev.get('config_hash')}"
                    f", this config {run_hash}); choose another folder or pass --overwrite"
                )
        success = out.child(SUCCESS).path
        same = bool(prev) and prev.get("config_hash") == run_hash and not overwrite
        if same and fs.exists(success):
            return Claim(prev.get("run_id", ""), False, json.loads(fs.cat_file(success)))
        if fs.exists(success):
            fs.rm(success)
        resume = same and prev.get("plan_hash") == layout
        run_id = uuid.uuid4().hex[:12]
        write_json(
            out,
            RUN_FILE,
            {
                "config_hash": run_hash,
                "plan_hash": layout,
                "run_id": run_id,
                "raymerge": __version__,
                "started": time.time(),
            },
        )
        return Claim(run_id, resume, None)
    except PermissionError as exc:
        raise OutputError(
            f"{out.url}: not writable ({exc.strerror or type(exc).__name__})"
        ) from None
    except OSError as exc:
        if isinstance(exc, (OutputError, InputError)):
            raise
        raise OutputError(f"{out.url}: cannot use as output: {exc}") from None


__all__ = ["RUN_FILE", "SUCCESS", "Claim", "claim_output"]
