"""Small output files (JSON records, side files, markers), written atomically."""

from __future__ import annotations

import json
import os
from typing import Any

from raymerge.storage import Location


def write_small(out: Location, name: str, data: bytes) -> None:
    """Write a small file atomically: temp + rename locally, a single PUT on object stores."""
    loc = out.child(name)
    if out.is_local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = f"{loc.path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
    else:
        out.fs.pipe_file(loc.path, data)


def write_json(out: Location, name: str, obj: Any) -> None:
    write_small(out, name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
