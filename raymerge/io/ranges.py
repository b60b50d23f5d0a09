"""Byte-range reads of input files: memory-mapped local files, concurrent ranged GETs remotely.

Workers read exactly the byte ranges a job needs. Local files are memory-mapped (private,
copy-on-write), so kernels read the page cache directly with no copy and a stray write can never
reach the file; filesystems that cannot map are read with ``preadv``. Remote ranges are split into
~32 MiB ranged GETs issued concurrently (at most ``READ_CONCURRENCY`` per call). :func:`decode`
turns bytes into tensors without a copy.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from fsspec.asyn import AsyncFileSystem

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.io.fingerprint import (
    FileFingerprint,
    InputChangedError,
    check_same,
    from_listing,
    header_hash,
    local_now,
)
from raymerge.io.header import DTYPES, MAX_HEADER_BYTES
from raymerge.storage import Location

REMOTE_RANGE_BYTES = 32 << 20  # split big remote reads into ranged GETs of this size
READ_CONCURRENCY = 16


Expect = Mapping[str, FileFingerprint]  # file name -> the planned version (see io.fingerprint)


def fetch(
    loc: Location,
    ranges: list[tuple[str, int, int]],
    expect: Expect | None = None,
    reader: str = "s3fs",
) -> list[Any]:
    """Read (file, start, end) ranges of one input, from the planned versions of its files.

    Local files are memory-mapped, not read: one private (copy-on-write) mapping per file
    spanning the job's ranges, so the bytes come straight from the page cache with no copy and
    no zero-filled buffer, and a stray write into an input tensor can never reach the file.
    Remote: large ranges split into ~32 MiB ranged GETs issued concurrently; on S3 each is
    conditional on the planned ETag (or version id).

    Args:
        loc: the input model's folder.
        ranges: (file name, start, end) byte ranges.
        expect: the planned fingerprint of each file; None: read whatever is there (outputs).
        reader: the client for S3 range reads: ``s3fs`` (through fsspec) or ``obstore``
            (Rust object_store: about half the CPU per byte, see benchmarks/storage_client.py).

    Raises:
        InputChangedError: a file is not the planned version (local files: the pages are mapped
            lazily, so callers check again with :func:`recheck_local` after using them).
    """
    expect = expect or {}
    if loc.is_local:
        return _map_local(loc, ranges, expect)
    paths, starts, ends, owner, files = [], [], [], [], []
    for k, (file, start, end) in enumerate(ranges):
        pos = start
        while True:
            stop = min(end, pos + REMOTE_RANGE_BYTES)
            paths.append(loc.child(file).path)
            starts.append(pos)
            ends.append(stop)
            owner.append(k)
            files.append(file)
            pos = stop
            if pos >= end:
                break
    if _is_s3(loc.fs) and expect and reader == "obstore":
        parts = _obstore_conditional(loc, files, paths, starts, ends, expect)
    elif _is_s3(loc.fs) and expect:
        parts = _s3_conditional(loc, files, paths, starts, ends, expect)
    else:
        for file in dict.fromkeys(files):  # other protocols: compare size and ETag/mtime first
            planned = expect.get(file)
            if planned is not None:
                info = loc.fs.info(loc.child(file).path)
                check_same(f"{loc.url}/{file}", planned, from_listing(info))
        parts = read_ranges(loc.fs, paths, starts, ends)
    joined: list[list[bytes]] = [[] for _ in ranges]
    for k, part in zip(owner, parts):
        joined[k].append(part)
    return [p[0] if len(p) == 1 else b"".join(p) for p in joined]


def recheck_local(loc: Location, files: set[str] | list[str], expect: Expect) -> None:
    """Local files used by a job are still their planned version (call after the compute: the
    mapped pages were read lazily, during it)."""
    for file in files:
        planned = expect.get(file)
        if planned is not None:
            check_same(f"{loc.url}/{file}", planned, local_now(loc.child(file).path))


def _is_s3(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (list, tuple)) else (fs.protocol,)
    return bool({"s3", "s3a"} & set(protocol)) and hasattr(fs, "_call_s3")


# (bucket, key, start, end, planned version) -> the bytes; raises _Replaced on a 412
Get = Callable[[str, str, int, int, FileFingerprint | None], Awaitable[bytes]]


async def _conditional_reads(
    loc: Location, files: list[str], paths: list[str], starts: list[int], ends: list[int],
    expect: Expect, get: Get,
) -> list[bytes]:  # fmt: skip
    """The ranges through ``get(bucket, key, start, end, planned)`` (a client's GET of the
    planned version), ``READ_CONCURRENCY`` at a time; a replaced object (``get`` raised
    :class:`_Replaced`) fails with :class:`InputChangedError` naming it; a short read is an
    error."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(file: str, path: str, start: int, end: int) -> bytes:
        bucket, key, _ = loc.fs.split_path(path)
        planned = expect.get(file)
        async with gate:
            try:
                data = await get(bucket, key, start, end, planned)
            except _Replaced:
                what = "version" if planned and planned.version_id else "ETag"
                was = planned.version_id or planned.etag if planned else None
                raise InputChangedError(
                    f"{loc.url}/{file}", f"its {what} is no longer {was}"
                ) from None
        if len(data) != end - start:
            raise OSError(f"{path}: short read of range [{start}, {end}): got {len(data)} bytes")
        return data

    return list(await asyncio.gather(*map(one, files, paths, starts, ends)))


class _Replaced(Exception):
    """The store refused the planned version (412 Precondition Failed)."""


def _s3_conditional(
    loc: Location, files: list[str], paths: list[str], starts: list[int], ends: list[int],
    expect: Expect,
) -> list[bytes]:  # fmt: skip
    """Ranged GETs of the planned object versions: ``If-Match`` the planned ETag, or the planned
    version id on versioned buckets; a replaced object fails with :class:`InputChangedError`."""
    from fsspec.asyn import sync
    from s3fs.core import _error_wrapper  # s3fs's own retry of dropped bodies, as in cat_file

    fs = loc.fs

    async def get(bucket: str, key: str, start: int, end: int, planned) -> bytes:
        cond: dict[str, str] = {}
        if planned is not None and planned.version_id:
            cond["VersionId"] = planned.version_id
        elif planned is not None and planned.etag:
            cond["IfMatch"] = planned.etag

        async def call_and_read() -> bytes:
            resp = await fs._call_s3(
                "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **cond
            )
            try:
                return await resp["Body"].read()
            finally:
                resp["Body"].close()

        try:
            return await _error_wrapper(call_and_read, retries=fs.retries)
        except OSError as exc:
            if _precondition_failed(exc):
                raise _Replaced from None
            raise

    if not paths:
        return []
    return sync(fs.loop, _conditional_reads, loc, files, paths, starts, ends, expect, get)


def _obstore(fs: Any, bucket: str) -> Any:
    """An obstore S3 store with the s3fs filesystem's endpoint and credentials (cached per
    process and bucket)."""
    key = (id(fs), bucket)
    store = _OBSTORES.get(key)
    if store is None:
        from obstore.store import S3Store

        kw = fs.client_kwargs or {}
        endpoint = getattr(fs, "endpoint_url", None) or kw.get("endpoint_url")
        cfg: dict[str, Any] = {}
        if fs.key:
            cfg.update(access_key_id=fs.key, secret_access_key=fs.secret)
        if getattr(fs, "token", None):
            cfg["token"] = fs.token
        if getattr(fs, "anon", False):
            cfg["skip_signature"] = True
        region = kw.get("region_name") or os.environ.get("AWS_REGION") or "us-east-1"
        store = _OBSTORES[key] = S3Store(
            bucket,
            endpoint=endpoint,
            region=region,
            client_options={"allow_http": bool(endpoint and endpoint.startswith("http:"))},
            **cfg,
        )
    return store


_OBSTORES: dict[tuple[int, str], Any] = {}


def _obstore_conditional(
    loc: Location, files: list[str], paths: list[str], starts: list[int], ends: list[int],
    expect: Expect,
) -> list[bytes]:  # fmt: skip
    """As :func:`_s3_conditional`, through obstore (``if_match`` / ``version`` options)."""
    from obstore import get_async
    from obstore.exceptions import PreconditionError

    async def get(bucket: str, key: str, start: int, end: int, planned) -> bytes:
        opts: dict[str, Any] = {"range": (start, end)}
        if planned is not None and planned.version_id:
            opts["version"] = planned.version_id
        elif planned is not None and planned.etag:
            opts["if_match"] = planned.etag
        try:
            resp = await get_async(_obstore(loc.fs, bucket), key, options=opts)
            return bytes(await resp.bytes_async())
        except PreconditionError:
            raise _Replaced from None

    if not paths:
        return []
    return asyncio.run(_conditional_reads(loc, files, paths, starts, ends, expect, get))


def _precondition_failed(exc: BaseException) -> bool:
    cause = exc.__cause__
    err = getattr(cause, "response", {}).get("Error", {}) if cause is not None else {}
    return err.get("Code") in ("PreconditionFailed", "412")


def _map_local(loc: Location, ranges: list[tuple[str, int, int]], expect: Expect) -> list[Any]:
    by_file: dict[str, list[int]] = {}
    for k, (file, _, _) in enumerate(ranges):
        by_file.setdefault(file, []).append(k)
    out: list[Any] = [None] * len(ranges)
    for file, ks in by_file.items():
        spans = [(ranges[k][1], ranges[k][2]) for k in ks]
        got = _file_ranges(loc.child(file).path, f"{loc.url}/{file}", spans, expect.get(file))
        for k, part in zip(ks, got):
            out[k] = part
    return out


# local files whose header this process has checked against the plan: (path, size, mtime, ino)
_HEADERS_OK: set[tuple[str, int, int, int]] = set()


def _check_local(fd: int, path: str, where: str, planned: FileFingerprint | None) -> None:
    """The open file is the planned version: size, mtime and inode, and (once per process and
    file version) the header bytes' hash."""
    if planned is None:
        return
    st = os.fstat(fd)
    check_same(
        where, planned, FileFingerprint(st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
    )
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    if planned.header_xxh is None or key in _HEADERS_OK:
        return
    n = int.from_bytes(os.pread(fd, 8, 0), "little")
    if n > MAX_HEADER_BYTES or 8 + n > st.st_size:
        raise InputChangedError(where, f"its header length is now {n}")
    digest = header_hash(os.pread(fd, 8 + n, 0))
    if digest != planned.header_xxh:
        raise InputChangedError(where, f"its header hash {planned.header_xxh} -> {digest}")
    _HEADERS_OK.add(key)


def _file_ranges(
    path: str, where: str, spans: list[tuple[int, int]], planned: FileFingerprint | None
) -> list[Any]:
    """[start, end) ranges of one local file: views of one mapping spanning them all (it stays
    valid after the file is closed), or, where the filesystem cannot map, fresh reads."""
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    try:
        _check_local(fd, path, where, planned)
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


__all__ = ["decode", "fetch", "read_ranges", "recheck_local"]
