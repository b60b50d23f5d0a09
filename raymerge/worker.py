"""The body of one job: range-read its inputs, merge each piece, write its output byte range.

Runs inside a Ray worker but imports no Ray: :mod:`raymerge.execution` wraps :func:`run_job`
(and :func:`run_stats` for the statistics rounds of chunked tensors) in tasks. Every input is read
straight from storage by the worker and every output byte goes straight to the sink, so the driver
only sees small typed results (:mod:`raymerge.results`). Deterministic: the output depends only on
the job, never on the worker, attempt or timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from raymerge.io.sinks.base import Sink
else:
    from raymerge._lazy import torch

from raymerge.buffers import out_buffer, out_view
from raymerge.errors import RaymergeError
from raymerge.io.fingerprint import FileFingerprint
from raymerge.io.header import DTYPES
from raymerge.io.sinks.base import checksum
from raymerge.methods import get_method, merge_piece, piece_stats
from raymerge.methods.base import PieceInfo, Stats
from raymerge.plan import Job, Piece
from raymerge.reading import (
    Cached,
    finite,
    nonfinite_input,
    piece_inputs,
    read_pieces,
    recheck_inputs,
)
from raymerge.results import JobResult, StatsResult
from raymerge.storage import Location, counting_retries
from raymerge.summary import peak_rss

FaultHook = Callable[[Job, int], None]  # (job, attempt): called between a job's read and compute


@dataclass(frozen=True)
class JobContext:
    """What every job of a run shares; shipped to workers once (ray.put).

    ``fault``: an injectable hook for fault-injection tests (it may kill its own process); None
    in every real run."""

    inputs: tuple[Location, ...]
    method: str
    math_dtype: str  # "F32" or "F64"
    headers: tuple[bytes, ...]  # per output shard
    sink: Sink
    allow_nonfinite: bool = False
    fault: FaultHook | None = None
    # per input: file name -> its planned version (every read proves it reads that version)
    fingerprints: tuple[Mapping[str, FileFingerprint], ...] = ()
    s3_reader: str = "s3fs"  # the client of S3 range reads (raymerge.io.ranges.fetch)

    def expect(self, i: int) -> Mapping[str, FileFingerprint] | None:
        return self.fingerprints[i] if self.fingerprints else None

    @property
    def remote_io(self) -> bool:
        """Jobs wait on the network (a remote input or output), not only on the CPU."""
        return any(not loc.is_local for loc in self.inputs) or self.sink.kind != "local"


class NonFiniteError(RaymergeError):
    """A merge turned finite inputs into NaN/Inf (e.g. an overflowing lambda)."""


def keepable(piece: Piece, raw: Sequence[Any], ctx: JobContext) -> list[Any]:
    """The sources of ``piece`` worth keeping in memory for its next reads: those of remote
    inputs, as uint8 arrays (zero-copy; Ray stores numpy arrays out of band). Local inputs are
    mapped from the page cache, which already keeps them; they are None (read again)."""
    import numpy as np

    return [
        None if ctx.inputs[s.input].is_local else np.frombuffer(b, dtype=np.uint8)
        for s, b in zip(piece.sources, raw)
    ]


def _check_result(p: Piece, result: torch.Tensor, inputs: list[torch.Tensor], ctx: JobContext):
    """A non-finite result: from a non-finite input (named), or from the merge itself."""
    if ctx.allow_nonfinite or finite(result):
        return
    for s, t in zip(p.sources, inputs):
        if not finite(t):
            raise nonfinite_input(s, ctx)
    raise NonFiniteError(
        f"tensor {p.name!r}: the merge produced NaN or Inf values from finite inputs "
        "(overflow: check the weights and lambda); nothing was committed. Pass "
        "--allow-nonfinite to write them anyway"
    )


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
) -> tuple[StatsResult, list[Any] | None]:
    """Partial whole-tensor statistics of round ``len(prev)`` for one chunk (on CPU).

    Args:
        piece: the chunk.
        ctx: the run's shared context.
        prev: the reduced statistics of the earlier rounds.
        device: where to compute.
        compute_lock: held while computing, not while reading (see :func:`run_job`).
        cached: the chunk's source bytes where already in memory.
        keep: also return the source bytes (see :func:`keepable`) for the later rounds and
            the merge.

    Returns:
        The statistics, and the kept bytes (None unless ``keep``).
    """
    with counting_retries() as retries:
        raws, extra, nread = read_pieces([piece], ctx, [cached])
    with compute_lock or nullcontext():
        stats = _piece_stats(piece, raws[0], extra[0], ctx, prev, device)
    recheck_inputs([piece], ctx)
    kept = keepable(piece, raws[0], ctx) if keep else None
    return StatsResult(stats, nread, retries[0]), kept


def _piece_stats(
    piece: Piece, raw: list[Any], extra: list[Any], ctx: JobContext, prev: list[Stats], device: str
):
    base, others = _split(piece, piece_inputs(piece, raw, extra, ctx, device))
    prev_dev = [{k: v.to(device) for k, v in st.items()} for st in prev]
    part = piece_stats(
        get_method(ctx.method),
        _info(piece),
        base,
        others,
        piece.params.models,
        dict(piece.params.method),
        prev_dev,
        DTYPES[ctx.math_dtype][0],
    )
    return {k: v.cpu() for k, v in part.items()}


def run_job(
    job: Job,
    ctx: JobContext,
    stats: Mapping[str, list[Stats]] | None = None,
    device: str = "cpu",
    attempt: int = 1,
    compute_lock: AbstractContextManager[Any] | None = None,
    cached: Cached | None = None,
    external: Mapping[str, Any] | None = None,
) -> JobResult:
    """Compute and write one job.

    Args:
        job: the job.
        ctx: the run's shared context.
        stats: the reduced statistics of chunked tensors whose method needs whole-tensor
            statistics, by tensor name.
        device: where to compute.
        attempt: which attempt this is (reported, and passed to the fault hook).
        compute_lock: held only while computing: a worker running two jobs at once (pooled
            workers) reads or writes one while the other computes, never computing two at once.
        cached: source bytes already in memory (see :func:`read_pieces`), not read again.
        external: statistics computed before the jobs (ZipIt's matchings, by space).

    Returns:
        Its checksums, timings and counters.
    """
    with counting_retries() as retries:
        t0 = time.perf_counter()
        raw, extra, nread = read_pieces(job.pieces, ctx, cached)
        if ctx.fault is not None:
            ctx.fault(job, attempt)
        t_read = time.perf_counter() - t0
        with compute_lock or nullcontext():
            t1 = time.perf_counter()
            view, checks = _compute(job, (raw, extra), ctx, stats, device, external)
            t_compute = time.perf_counter() - t1
        recheck_inputs(job.pieces, ctx)
        t2 = time.perf_counter()
        receipt = ctx.sink.write(job.byte_range, view)
        t_end = time.perf_counter()
    header_len = len(ctx.headers[job.shard])
    return JobResult(
        job=job.id,
        checksums=tuple(checks),
        header_checksum=checksum(view[:header_len]) if job.part == 1 else None,
        receipt=receipt,
        attempt=attempt,
        read_s=t_read,
        compute_s=t_compute,
        write_s=t_end - t2,
        wall_s=t_end - t0,
        bytes_read=nread,
        bytes_reused=job.bytes_read - nread,
        bytes_written=job.nbytes,
        rss_peak=peak_rss(),
        storage_retries=retries[0],
    )


def _compute(
    job: Job,
    read: tuple[list[list[Any]], list[list[Any]]],
    ctx: JobContext,
    stats: Mapping[str, list[Stats]] | None,
    device: str,
    external: Mapping[str, Any] | None,
) -> tuple[memoryview, list[str]]:
    """The job's output bytes (header included) and one checksum per piece; ``read``: the
    sources' bytes and their extras' (see :func:`read_pieces`)."""
    raw, extra = read
    method = get_method(ctx.method)
    math_dtype = DTYPES[ctx.math_dtype][0]
    buf = out_buffer(job, len(ctx.headers[job.shard]))
    view = memoryview(buf.numpy())
    if job.part == 1:
        header = ctx.headers[job.shard]
        view[: len(header)] = header
    checks: list[str] = []
    for p, p_raw, p_extra in zip(job.pieces, raw, extra):
        lo, hi = p.out_start - job.out_start, p.out_end - job.out_start
        if p.copy:  # a non-float tensor: its bytes, as they are
            view[lo:hi] = memoryview(p_raw[0]).cast("B")
            checks.append(checksum(view[lo:hi]))
            continue
        inputs = piece_inputs(p, p_raw, p_extra, ctx, device, not method.nonfinite_propagates)
        base, others = _split(p, inputs)
        tensor_stats = None
        if p.n_chunks > 1 and p.rounds:
            tensor_stats = [
                {k: v.to(device) for k, v in st.items()} for st in (stats or {})[p.name]
            ]
        out_dtype = DTYPES[p.out_dtype][0]
        target = out_view(buf, lo, hi, out_dtype) if device == "cpu" else None
        merged = merge_piece(
            method,
            _info(p),
            base,
            others,
            p.params.models,
            dict(p.params.method),
            tensor_stats,
            math_dtype=math_dtype,
            out=target,
            external=external,
        )
        if target is None and hi > lo:  # GPU, or an unaligned offset: copy the bytes over
            data = merged.to(dtype=out_dtype).reshape(-1).contiguous().cpu()
            view[lo:hi] = data.view(torch.uint8).numpy().data
        _check_result(p, target if target is not None else merged, inputs, ctx)
        checks.append(checksum(view[lo:hi]))
        del base, others, merged, target, inputs
    raw.clear()
    return view, checks
