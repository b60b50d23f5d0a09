"""The body of one job: range-read its inputs, merge each piece, write its output byte range.

Runs inside a Ray worker but imports no Ray: the executor wraps :func:`run_job` (and
:func:`run_stats` for the statistics rounds of chunked tensors) in tasks. Every input is read
straight from storage by the worker and every output byte goes straight to the sink, so the driver
only sees small result dicts (checksums, timings, statistics). Deterministic: the output depends
only on the job, never on the worker, attempt or timing.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.errors import InputError
from raymerge.io.header import DTYPES
from raymerge.io.reader import decode, read_ranges
from raymerge.io.writer import checksum
from raymerge.methods import BLOCK_ELEMENTS, get_method, merge_piece, piece_stats
from raymerge.methods.base import PieceInfo, Stats
from raymerge.plan import Job, Piece
from raymerge.storage import Location, counting_retries

REMOTE_RANGE_BYTES = 32 << 20  # split big remote reads into ranged GETs of this size


@dataclass(frozen=True)
class JobContext:
    """What every job of a run shares; shipped to workers once (ray.put)."""

    inputs: tuple[Location, ...]
    method: str
    math_dtype: str  # "F32" or "F64"
    headers: tuple[bytes, ...]  # per output shard
    sink: Any
    allow_nonfinite: bool = False
    fault_marker: str | None = None  # chaos testing, see _inject_fault

    @property
    def remote_io(self) -> bool:
        """Jobs wait on the network (a remote input or output), not only on the CPU."""
        return any(not loc.is_local for loc in self.inputs) or self.sink.kind != "local"


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


Cached = Sequence[Sequence[Any] | None]  # per piece: its sources' bytes (None: not held)


def read_pieces(
    pieces: Sequence[Piece], ctx: JobContext, cached: Cached | None = None
) -> tuple[list[list[Any]], int]:
    """Raw bytes of every source of every piece, in piece and read order; one batch per input.
    ``cached[pi][k]``, where given and not None, is source k of piece pi already in memory (a
    chunk kept from an earlier statistics round) and is not read again. Also returns the bytes
    read from storage."""
    wanted: dict[int, list[tuple[int, int, tuple[str, int, int]]]] = {}
    out: list[list[Any]] = [[None] * len(p.sources) for p in pieces]
    nread = 0
    for pi, p in enumerate(pieces):
        have = cached[pi] if cached else None
        for k, s in enumerate(p.sources):
            if have is not None and have[k] is not None:
                out[pi][k] = have[k]
                continue
            wanted.setdefault(s.input, []).append((pi, k, (s.file, s.start, s.end)))
            nread += s.end - s.start
    for i, items in wanted.items():
        for (pi, k, _), buf in zip(items, fetch(ctx.inputs[i], [r for _, _, r in items])):
            out[pi][k] = buf
    return out, nread


def keepable(piece: Piece, raw: Sequence[Any], ctx: JobContext) -> list[Any]:
    """The sources of ``piece`` worth keeping in memory for its next reads: those of remote
    inputs, as uint8 arrays (zero-copy; Ray stores numpy arrays out of band). Local inputs are
    mapped from the page cache, which already keeps them; they are None (read again)."""
    import numpy as np

    return [
        None if ctx.inputs[s.input].is_local else np.frombuffer(b, dtype=np.uint8)
        for s, b in zip(piece.sources, raw)
    ]


def _tensors(p: Piece, raw: list[Any], ctx: JobContext, device: str) -> Iterator[torch.Tensor]:
    """Decoded inputs in their stored dtype (converted to the math dtype block by block later)."""
    for s, data in zip(p.sources, raw):
        t = decode(data, s.dtype, p.piece_shape)
        if not ctx.allow_nonfinite and not finite(t):
            raise InputError(
                f"{ctx.inputs[s.input].url}/{s.file}: tensor {s.tensor!r} holds NaN or Inf "
                "values; pass --allow-nonfinite to merge anyway"
            )
        if device == "cpu":
            yield t
        else:  # through page-locked memory (torch caches those blocks): a DMA copy, no staging
            yield t.pin_memory().to(device=device, non_blocking=True)


def finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``. A float32 sum is NaN/Inf whenever an element is, so one cheap
    reduction per block settles the common case (a block-sized float32 temporary, never a
    tensor-sized one); only a non-finite sum (or overflow) gets the exact scan."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    flat = t.reshape(-1)
    for a in range(0, flat.numel(), BLOCK_ELEMENTS):
        blk = flat[a : a + BLOCK_ELEMENTS]
        if not bool(torch.isfinite(blk.sum(dtype=torch.float32))) and not bool(
            torch.isfinite(blk).all()
        ):
            return False
    return True


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM; unlike ru_maxrss it is not
    inherited across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _out_buffer(job: Job, header_len: int) -> torch.Tensor:
    """The job's output bytes as an uninitialised uint8 tensor (no zero-fill pass over memory
    every byte of which is about to be written): the header and the pieces tile the range; any
    byte they would not cover is zeroed here, so the output never holds stale memory."""
    buf = torch.empty(job.nbytes, dtype=torch.uint8)
    covered = [(0, header_len)] if job.part == 1 else []
    covered += [(p.out_start - job.out_start, p.out_end - job.out_start) for p in job.pieces]
    pos = 0
    for lo, hi in sorted(covered):
        if lo > pos:
            buf[pos:lo] = 0
        pos = max(pos, hi)
    if pos < job.nbytes:
        buf[pos:] = 0
    return buf


def _out_view(buf: torch.Tensor, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor | None:
    """A flat tensor aliasing buf[lo:hi], if the offset is aligned for ``dtype``."""
    item = torch.empty(0, dtype=dtype).element_size()
    if hi == lo or lo % item:
        return None
    return buf[lo:hi].view(dtype)


def _split(p: Piece, tensors: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    return (tensors[0], tensors[1:]) if p.has_base else (None, tensors)


def _info(p: Piece) -> PieceInfo:
    return PieceInfo(p.name, p.shape, p.elem_start, p.elem_end, p.seed)


def run_stats(
    piece: Piece,
    ctx: JobContext,
    prev: list[Stats],
    device: str = "cpu",
    compute_lock: AbstractContextManager[Any] | None = None,
    cached: Sequence[Any] | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Partial whole-tensor statistics of round ``len(prev)`` for one chunk (returned on CPU),
    and the bytes it read from storage. ``compute_lock``: held while computing, not while
    reading (see :func:`run_job`). ``cached``: the chunk's source bytes where already in memory;
    ``keep``: also return them (``"raw"``, see :func:`keepable`) for the rounds and the merge
    after this one."""
    with counting_retries() as retries:
        raws, nread = read_pieces([piece], ctx, [cached])
    with compute_lock or nullcontext():
        stats = _piece_stats(piece, raws[0], ctx, prev, device)
    out = {"stats": stats, "bytes_read": nread, "storage_retries": retries[0]}
    if keep:
        out["raw"] = keepable(piece, raws[0], ctx)
    return out


def _piece_stats(piece: Piece, raw: list[Any], ctx: JobContext, prev: list[Stats], device: str):
    base, others = _split(piece, list(_tensors(piece, raw, ctx, device)))
    params = json.loads(piece.params)
    prev_dev = [{k: v.to(device) for k, v in st.items()} for st in prev]
    part = piece_stats(
        get_method(ctx.method),
        _info(piece),
        base,
        others,
        params["models"],
        params["method"],
        prev_dev,
        DTYPES[ctx.math_dtype][0],
    )
    return {k: v.cpu() for k, v in part.items()}


FAULT_ENV = "RAYMERGE_FAULT_KILL_ONCE"


def _inject_fault(job: Job, marker: str | None) -> None:
    """Chaos hook: when the driver runs with ``RAYMERGE_FAULT_KILL_ONCE=/path/marker``, the first
    job to create the marker file SIGKILLs its own worker mid-task (fault-tolerance tests)."""
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(job.id).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def run_job(
    job: Job,
    ctx: JobContext,
    stats: dict[str, list[Stats]] | None = None,
    device: str = "cpu",
    attempt: int = 1,
    compute_lock: AbstractContextManager[Any] | None = None,
    cached: Cached | None = None,
) -> dict[str, Any]:
    """Compute and write one job; return its checksums and timings. ``stats`` holds the reduced
    statistics of chunked tensors whose method needs whole-tensor statistics (by tensor name),
    and the external statistics the method names (by key, e.g. ``zipit:<space>``). ``cached``:
    source bytes already in memory (see :func:`read_pieces`), not read again.

    ``compute_lock`` is held only while computing: a worker running two jobs at once (pooled
    workers) reads or writes one while the other computes, and never computes two at a time."""
    with counting_retries() as retries:
        t0 = time.perf_counter()
        raw, nread = read_pieces(job.pieces, ctx, cached)
        _inject_fault(job, ctx.fault_marker)
        t_read = time.perf_counter() - t0
        with compute_lock or nullcontext():
            t1 = time.perf_counter()
            view, checks = _compute(job, raw, ctx, stats, device)
            t_compute = time.perf_counter() - t1
        t2 = time.perf_counter()
        sink_info = ctx.sink.write(job, view)
        t_write = time.perf_counter() - t2
    return {
        "job": job.id,
        "checksums": checks,
        "header_checksum": checksum(view[: len(ctx.headers[job.shard])]) if job.part == 1 else None,
        "attempt": attempt,
        "read_s": t_read,
        "compute_s": t_compute,
        "write_s": t_write,
        "bytes_read": nread,  # from storage; the rest of job.bytes_read was kept in memory
        "bytes_reused": job.bytes_read - nread,
        "bytes_written": job.nbytes,
        "rss_peak": peak_rss(),
        "storage_retries": retries[0],
        **sink_info,
    }


def _compute(
    job: Job,
    raw: list[list[Any]],
    ctx: JobContext,
    stats: dict[str, list[Stats]] | None,
    device: str,
) -> tuple[memoryview, list[str]]:
    """The job's output bytes (header included) and one checksum per piece."""
    method = get_method(ctx.method)
    math_dtype = DTYPES[ctx.math_dtype][0]
    buf = _out_buffer(job, len(ctx.headers[job.shard]))
    view = memoryview(buf.numpy())
    if job.part == 1:
        header = ctx.headers[job.shard]
        view[: len(header)] = header
    checks: list[str] = []
    for p, p_raw in zip(job.pieces, raw):
        base, others = _split(p, list(_tensors(p, p_raw, ctx, device)))
        params = json.loads(p.params)
        tensor_stats = None
        if p.n_chunks > 1 and p.rounds:
            tensor_stats = [
                {k: v.to(device) for k, v in st.items()} for st in (stats or {})[p.name]
            ]
        external = method.external(params["method"])
        if external:  # statistics from a stage before the jobs (ZipIt's matchings)
            tensor_stats = [
                {k: v.to(device) for key in external for k, v in (stats or {})[key][0].items()}
            ]
        lo = p.out_start - job.out_start
        hi = p.out_end - job.out_start
        out_dtype = DTYPES[p.out_dtype][0]
        target = _out_view(buf, lo, hi, out_dtype) if device == "cpu" else None
        merged = merge_piece(
            method,
            _info(p),
            base,
            others,
            params["models"],
            params["method"],
            tensor_stats,
            math_dtype=math_dtype,
            out=target,
        )
        if target is None and hi > lo:  # GPU, or an unaligned offset: copy the bytes over
            data = merged.to(dtype=out_dtype).reshape(-1).contiguous().cpu()
            view[lo:hi] = data.view(torch.uint8).numpy().data
        checks.append(checksum(view[lo:hi]))
        del base, others, merged, target
    raw.clear()
    return view, checks
