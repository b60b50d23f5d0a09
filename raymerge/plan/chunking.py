"""Phase 2 of planning: the memory model, and tensors -> pieces (row chunks).

Kernels run block by block (:data:`raymerge.methods.engine.BLOCK_ELEMENTS`): per element a job
holds the raw input bytes and the output bytes, while math-dtype copies and temporaries exist for
one block at a time. A tensor whose piece would not fit the job memory budget is split into row
chunks of balanced size (flat element ranges if one row is too big); elementwise methods also
split for parallelism and the upload part size. Row-local methods keep rows whole; methods that
need the whole tensor at once are never split. Chunk bounds are whole *stat units*
(:func:`raymerge.methods.base.stat_unit`), so whole-tensor statistics reduce to the unchunked
numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from raymerge.io.header import TensorSource, itemsize
from raymerge.methods.base import MergeMethod, stat_unit
from raymerge.methods.engine import BLOCK_ELEMENTS
from raymerge.params import ResolvedParams
from raymerge.plan.quant import ScaleOf
from raymerge.plan.records import Piece, ScaleRange, Source


@dataclass(frozen=True)
class Footprint:
    """Bytes a piece holds per element (raw inputs, output, and temporaries when the method
    takes the piece as one block) and the temporaries of one block."""

    per_elem: int
    block_temp: int


def footprint(
    method: MergeMethod,
    params: ResolvedParams,
    shape: tuple[int, ...],
    in_items: Sequence[int],
    out_item: int,
    n_merged: int,
    math_item: int,
) -> Footprint:
    temp_per_elem = len(in_items) * math_item + method.work_bytes(n_merged) * math_item // 4
    whole_block = (method.row_local(params.method) and len(shape) < 2) or method.is_whole(
        params.method
    )
    per_elem = sum(in_items) + out_item + (temp_per_elem if whole_block else 0)
    return Footprint(per_elem, 0 if whole_block else temp_per_elem)


def chunk_bounds(
    method: MergeMethod,
    params: ResolvedParams,
    shape: tuple[int, ...],
    fp: Footprint,
    *,
    usable: int,
    out_item: int,
    job_bytes: int,
) -> list[int]:
    """Flat element bounds [b0 = 0, b1, ..., numel] of the tensor's pieces."""
    rounds = len(method.stat_rounds(params.method, params.models))
    row_local = method.row_local(params.method)
    # the largest piece that fits: raw+output for all its elements, temporaries for one block
    max_elems = max(
        (usable - BLOCK_ELEMENTS * fp.block_temp) // fp.per_elem,
        min(BLOCK_ELEMENTS, usable // (fp.per_elem + fp.block_temp)),
        1,
    )
    numel = math.prod(shape)
    unit = stat_unit(shape)
    row = math.prod(shape[1:]) if len(shape) >= 2 else 0
    n_chunks = math.ceil(numel / max_elems) if numel else 1
    if not rounds:  # elementwise: also split for parallelism / upload part size
        n_chunks = max(n_chunks, math.ceil(numel * out_item / job_bytes))
    if (row_local and (len(shape) < 2 or unit != row)) or method.is_whole(params.method):
        n_chunks = 1  # rows must stay whole, and a rank <= 1 tensor is one row
    return chunk_even(shape, n_chunks)


def chunk_even(shape: tuple[int, ...], n_chunks: int) -> list[int]:
    """Bounds of (at most) ``n_chunks`` pieces of whole stat units, as even as they come."""
    numel = math.prod(shape)
    unit = stat_unit(shape)
    units = max(1, math.ceil(numel / unit)) if numel else 1
    n = max(1, min(n_chunks, units))
    per = math.ceil(units / n)
    bounds = list(range(0, numel, per * unit)) if numel else [0]
    return bounds + [numel]


def whole_too_big(
    method: MergeMethod,
    params: ResolvedParams,
    pieces: Sequence[Piece],
    usable: int,
    job_memory: int,
) -> str | None:
    """The problem, if a tensor its method merges whole (one piece, never chunked) needs more
    than a job's ``usable`` memory (``job_memory`` less the fixed per-job allowance); None if it
    fits or may be chunked."""
    if not method.is_whole(params.method) or len(pieces) != 1:
        return None
    p = pieces[0]
    need = p.memory_bytes + p.block_bytes
    if need <= usable:
        return None
    return (
        f"{p.name} {list(p.shape)}: {method.name} merges each tensor whole (it cannot be split "
        f"into chunks), which needs --job-memory of at least {_gib(need + job_memory - usable)} "
        f"(this run: {_gib(job_memory)})"
    )


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def make_pieces(
    name: str,
    shape: tuple[int, ...],
    bounds: Sequence[int],
    source: Callable[[int, int], tuple[Source, ...]],
    *,
    out_dtype: str,
    out_start: int,
    has_base: bool,
    params: ResolvedParams,
    fp: Footprint,
    rounds: int,
    seed: int,
    copy: bool = False,
) -> list[Piece]:
    """The pieces of one tensor between consecutive ``bounds``; ``source(e0, e1)`` gives the
    input byte ranges of elements [e0, e1)."""
    out_item = itemsize(out_dtype)
    row = math.prod(shape[1:]) if len(shape) >= 2 else 0
    unit = stat_unit(shape)
    n = len(bounds) - 1
    pieces = []
    for c in range(n):
        e0, e1 = bounds[c], bounds[c + 1]
        if n == 1:
            pshape = shape
        elif row and unit == row:
            pshape = ((e1 - e0) // row, *shape[1:])
        else:
            pshape = (e1 - e0,)
        pieces.append(
            Piece(
                name=name,
                chunk=c,
                n_chunks=n,
                shape=shape,
                piece_shape=pshape,
                elem_start=e0,
                elem_end=e1,
                out_dtype=out_dtype,
                out_start=out_start + e0 * out_item,
                out_end=out_start + e1 * out_item,
                sources=source(e0, e1),
                has_base=has_base,
                params=params,
                memory_bytes=(e1 - e0) * fp.per_elem,
                block_bytes=min(BLOCK_ELEMENTS, e1 - e0) * fp.block_temp,
                rounds=rounds,
                seed=seed,
                copy=copy,
            )
        )
    return pieces


def element_source(
    i: int, src: TensorSource, e0: int, e1: int, scale: ScaleOf | None = None
) -> Source:
    """Elements [e0, e1) of tensor ``src`` of input ``i``, with the scales they need when it is
    quantised (``scale``)."""
    item = itemsize(src.dtype)
    sr = _scale_range(src, scale, e0, e1) if scale is not None else None
    return Source(
        i, src.name, src.file, src.start + e0 * item, src.start + e1 * item, src.dtype, sr
    )


def _scale_range(w: TensorSource, of: ScaleOf, e0: int, e1: int) -> ScaleRange:
    """The scales elements [e0, e1) of quantised tensor ``w`` need (whole rows, as chunks of
    2-D tensors are)."""
    s = of.scale
    item = itemsize(s.dtype)
    cols = math.prod(w.shape[1:]) if len(w.shape) > 1 else 1
    r0, r1 = e0 // cols, -(-e1 // cols)
    if of.block is None:
        if math.prod(s.shape) == 1:  # per tensor
            return ScaleRange(s.file, s.start, s.end, s.dtype, (), None, 0)
        return ScaleRange(  # per row
            s.file, s.start + r0 * item, s.start + r1 * item, s.dtype, (r1 - r0,), None, 0
        )
    bh, _ = of.block
    b0, b1 = r0 // bh, -(-r1 // bh)
    row = s.shape[1] * item
    return ScaleRange(
        s.file, s.start + b0 * row, s.start + b1 * row, s.dtype, (b1 - b0, s.shape[1]),
        of.block, r0 - b0 * bh,
    )  # fmt: skip
