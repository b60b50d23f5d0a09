"""Byte-range reads of input files: memory-mapped local files, concurrent ranged GETs remotely.

Workers read exactly the byte ranges a job needs. Local files are memory-mapped (private,
copy-on-write), so kernels read the page cache directly with no copy and a stray write can never
reach the file; filesystems that cannot map are read with ``preadv``. Remote ranges are split into
~32 MiB ranged GETs issued concurrently (at most ``READ_CONCURRENCY`` per call). :func:`decode`
turns bytes into tensors without a copy.
"""

from __future__ import annotations

import mmap
import os
import warnings
from typing import TYPE_CHECKING, Any

from fsspec.asyn import AsyncFileSystem

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.io.header import DTYPES
from raymerge.storage import Location

REMOTE_RANGE_BYTES = 32 << 20  # split big remote reads into ranged GETs of this size
READ_CONCURRENCY = 16


def fetch(loc: Location, ranges: list[tuple[str, int, int]]) -> list[Any]:
    """Read (file, start, end) ranges of one input. Local files are memory-mapped, not read: one
    private (copy-on-write) mapping per file spanning the job's ranges, so the bytes come straight
    from the page cache with no copy and no zero-filled buffer, and a stray write into an input
    tensor can never reach the file. Remote: large ranges split into ~32 MiB ranged GETs issued
    concurrently."""
    if loc.is_local:
        return _map_local(loc, ranges)
    paths, starts, ends, owner = [], [], [], []
    for k, (file, start, end) in enumerate(ranges):
        pos = start
        while True:
            stop = min(end, pos + REMOTE_RANGE_BYTES)
            paths.append(loc.child(file).path)
            starts.append(pos)
            ends.append(stop)
            owner.append(k)
            pos = stop
            if pos >= end:
                break
    parts = read_ranges(loc.fs, paths, starts, ends)
    joined: list[list[bytes]] = [[] for _ in ranges]
    for k, part in zip(owner, parts):
        joined[k].append(part)
    return [p[0] if len(p) == 1 else b"".join(p) for p in joined]


def _map_local(loc: Location, ranges: list[tuple[str, int, int]]) -> list[Any]:
    by_file: dict[str, list[int]] = {}
    for k, (file, _, _) in enumerate(ranges):
        by_file.setdefault(file, []).append(k)
    out: list[Any] = [None] * len(ranges)
    for file, ks in by_file.items():
        spans = [(ranges[k][1], ranges[k][2]) for k in ks]
        for k, part in zip(ks, _file_ranges(loc.child(file).path, f"{loc.url}/{file}", spans)):
            out[k] = part
    return out


def _file_ranges(path: str, where: str, spans: list[tuple[int, int]]) -> list[Any]:
    """[start, end) ranges of one local file: views of one mapping spanning them all (it stays
    valid after the file is closed), or, where the filesystem cannot map, fresh reads."""
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < hi:  # shrank since planning; a mapping past the end would SIGBUS
            start, end = next((s, e) for s, e in spans if e > size)
            raise OSError(f"{where}: short read at [{start}, {end}): the file holds {size} bytes")
        base = lo - lo % mmap.ALLOCATIONGRANULARITY
        view = memoryview(b"")
        if hi > base:
            try:
                view = memoryview(mmap.mmap(fd, hi - base, access=mmap.ACCESS_COPY, offset=base))
            except (OSError, ValueError):
                return [_pread(fd, s, e, where) for s, e in spans]
        return [view[s - base : e - base] for s, e in spans]
    finally:
        os.close(fd)


def _pread(fd: int, start: int, end: int, where: str) -> memoryview:
    """Bytes [start, end) of an open file into a fresh (not zero-filled) buffer."""
    buf = memoryview(torch.empty(end - start, dtype=torch.uint8).numpy())
    got = 0
    while got < end - start:
        n = os.preadv(fd, [buf[got:]], start + got)
        if n == 0:
            raise OSError(f"{where}: short read at [{start}, {end}): got {got} bytes")
        got += n
    return buf


def read_ranges(fs: Any, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    """Fetch byte ranges: async filesystems (s3fs, gcsfs, ...) run at most ``READ_CONCURRENCY``
    ranged GETs at once per worker (fsspec's default would launch thousands); others serially."""
    if not paths:
        return []
    if isinstance(fs, AsyncFileSystem):
        got = fs.cat_ranges(paths, starts, ends, batch_size=READ_CONCURRENCY)
    else:
        got = fs.cat_ranges(paths, starts, ends)
    for p, s, e, g in zip(paths, starts, ends, got):
        if isinstance(g, Exception):
            raise g
        if len(g) != e - s:
            raise OSError(f"{p}: short read of range [{s}, {e}): got {len(g)} bytes")
    return list(got)


def decode(buf: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Bytes -> tensor without copying. The tensor aliases ``buf``: treat it as read-only."""
    tdtype = DTYPES[dtype][0]
    if len(buf) == 0:
        return torch.empty(shape, dtype=tdtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frombuffer warns that bytes are not writable
        flat = torch.frombuffer(buf, dtype=torch.uint8)
    return flat.view(tdtype).reshape(shape)


__all__ = ["decode", "fetch", "read_ranges"]
