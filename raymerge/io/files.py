"""Small output files (JSON records, side files, markers), written atomically."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from raymerge.errors import OutputError
from raymerge.storage import Location


class DiskFullError(OutputError):
    """The output's filesystem is full (ENOSPC): nothing was committed; free space and rerun."""


def write_small(out: Location, name: str, data: bytes) -> None:
    """Write a small file atomically: temp + rename locally, a single PUT on object stores."""
    loc = out.child(name)
    if out.is_local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = f"{loc.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, loc.path)
        except BaseException as exc:
            try:
                os.remove(tmp)  # never leave a temp file beside the output
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DiskFullError(f"{loc.url}: disk full ({len(data)} bytes to write)") from None
            raise
    else:
        out.fs.pipe_file(loc.path, data)


def read_small(loc: Location, max_bytes: int) -> bytes:
    """The whole of a small file (a config, a JSON record); refused past ``max_bytes``, so a
    hostile or mistaken path never pulls a huge object into memory."""
    size = loc.fs.size(loc.path)
    if size is not None and size > max_bytes:
        raise ValueError(f"{size} bytes, more than the {max_bytes} allowed")
    return loc.fs.cat_file(loc.path)


def write_json(out: Location, name: str, obj: Any) -> None:
    write_small(out, name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
