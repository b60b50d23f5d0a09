"""The block engine: how a method runs over a piece, one cache-sized block at a time.

:func:`merge_piece` runs a method's statistics rounds (unless a chunked tensor's reduced
statistics are given) and its kernel over a piece block by block, converting each block to the
math dtype on the fly and writing results straight into the output buffer; :func:`piece_stats`
computes one round's partial statistics of a piece. :func:`merge_whole` is the one way to merge
whole tensors in-process; the distributed path runs the same steps on chunks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import MergeMethod, PieceInfo, Stats, combine
from raymerge.methods.registry import get_method

BLOCK_ELEMENTS = 1 << 20  # work in cache-friendly blocks; temporaries never span a whole tensor


def _blocks(method: MergeMethod, info: PieceInfo, params: dict[str, Any]) -> list[tuple[int, int]]:
    """Element ranges [a, b) of the piece, relative to it. Each is a whole number of stat units
    (and of rows for row-local methods), so blockwise statistics equal whole-piece ones."""
    n = info.elem_end - info.elem_start
    if method.is_whole(params):
        return [(0, n)]
    if method.row_local(params):
        if len(info.shape) < 2 or math.prod(info.shape[1:]) == 0:
            return [(0, n)]
        step = max(1, BLOCK_ELEMENTS // max(1, math.prod(info.shape[1:]))) * math.prod(
            info.shape[1:]
        )
    else:
        step = max(1, BLOCK_ELEMENTS // info.unit) * info.unit
    return [(a, min(a + step, n)) for a in range(0, n, step)] or [(0, 0)]


def _view(
    t: torch.Tensor | None,
    a: int,
    b: int,
    shape: tuple[int, ...] | None,
    dtype: torch.dtype | None,
    buf: dict[str, torch.Tensor] | None = None,
):
    """Elements [a, b) of ``t`` in ``dtype`` (None: as stored), shaped ``shape``. A conversion
    goes into ``buf["t"]`` (grown as needed, reused by the next block), so converting block
    after block touches the same memory instead of fresh pages each time."""
    if t is None:
        return None
    blk = t.reshape(-1)[a:b]
    if dtype is not None and blk.dtype != dtype and buf is not None:
        cur = buf.get("t")
        if cur is None or cur.numel() < b - a or cur.device != blk.device:
            cur = buf["t"] = torch.empty(b - a, dtype=dtype, device=blk.device)
        blk = cur[: b - a].copy_(blk)
    if shape is not None:
        blk = blk.reshape(shape)
    return blk if dtype is None else blk.to(dtype)


def _sub(info: PieceInfo, a: int, b: int) -> PieceInfo:
    return PieceInfo(info.name, info.shape, info.elem_start + a, info.elem_start + b, info.seed)


def _block_shape(method: MergeMethod, info: PieceInfo, params: dict[str, Any], a: int, b: int):
    if method.row_local(params) and len(info.shape) >= 2 and math.prod(info.shape[1:]) > 0:
        return ((b - a) // math.prod(info.shape[1:]), *info.shape[1:])
    if (a, b) == (0, info.elem_end - info.elem_start) and info.elem_start == 0 and b == info.numel:
        return info.shape
    return (b - a,)


def _block_inputs(method, info, params, base, tensors, math_dtype):
    """Per block: (block range, block PieceInfo, base block, input blocks) in the math dtype
    (``math_dtype=None``: in their storage dtype, for ``raw_inputs`` functions).

    Converted blocks live in buffers reused by the next block: consume a block's tensors (and
    anything the method returns that might alias them) before asking for the next one."""
    bufs: list[dict[str, torch.Tensor]] = [{} for _ in range(len(tensors) + 1)]
    for a, b in _blocks(method, info, params):
        shape = _block_shape(method, info, params, a, b)
        xs = [_view(x, a, b, shape, math_dtype, buf) for x, buf in zip(tensors, bufs[1:])]
        yield (a, b), _sub(info, a, b), _view(base, a, b, shape, math_dtype, bufs[0]), xs


def piece_stats(
    method: MergeMethod,
    info: PieceInfo,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    prev: Sequence[Stats],
    math_dtype: torch.dtype | None = None,
) -> Stats:
    """Partial statistics of round ``len(prev)`` for one piece (blockwise, or in one call for
    ``scope="piece"`` rounds: :class:`raymerge.methods.base.StatRound`). Math in ``math_dtype``
    (default float32)."""
    math_dtype = math_dtype or torch.float32
    rnd = method.stat_rounds(params, model_params)[len(prev)]
    if rnd.scope == "piece":  # raw inputs, its own steps: one call for the piece
        return rnd.fn(info, base, tensors, model_params, params, list(prev), math_dtype=math_dtype)
    if rnd.inputs == "raw":
        blocks = _block_inputs(method, info, params, base, tensors, None)
        return combine([
            rnd.fn(sub, b, xs, model_params, params, list(prev), math_dtype=math_dtype)
            for _, sub, b, xs in blocks
        ])  # fmt: skip
    return combine([
        rnd.fn(sub, b, xs, model_params, params, list(prev))
        for _, sub, b, xs in _block_inputs(method, info, params, base, tensors, math_dtype)
    ])  # fmt: skip


def merge_piece(
    method: MergeMethod,
    info: PieceInfo,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    stats: Sequence[Stats] | None = None,
    *,
    math_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    external: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Merge one piece, block by block.

    Args:
        method: the registered method.
        info: where the piece sits in its tensor.
        base: the base model's piece (methods with ``base="required"``), else None.
        tensors: the merged models' pieces, in their storage dtype (converted per block).
        model_params: one resolved parameter mapping per merged model.
        params: the method-wide resolved parameters.
        stats: the reduced whole-tensor statistics of a chunked tensor; None: the piece is the
            whole tensor and the statistics rounds run here.
        math_dtype: the dtype of the math (default float32).
        out: where the result goes (any dtype, the piece's number of elements).
        external: statistics computed before the jobs (ZipIt's matchings), by key.

    Returns:
        ``out``, or a new tensor in the math dtype shaped like the piece.
    """
    math_dtype = math_dtype or torch.float32
    if stats is None:
        stats = []
        for _ in method.stat_rounds(params, model_params):
            stats.append(
                piece_stats(method, info, base, tensors, model_params, params, stats, math_dtype)
            )
    ref = base if base is not None else tensors[0]
    result = out if out is not None else torch.empty(ref.shape, dtype=math_dtype, device=ref.device)
    flat = result.reshape(-1)
    fn = method.kernel.fn
    extra = {"external": external or {}} if method.external(params) else {}
    if method.kernel.inputs == "raw":
        for (a, b), sub, b_blk, xs in _block_inputs(method, info, params, base, tensors, None):
            fn(
                b_blk,
                xs,
                model_params,
                params,
                info=sub,
                stats=stats,
                math_dtype=math_dtype,
                out=flat[a:b],
                **extra,
            )
        return result
    for (a, b), sub, b_blk, xs in _block_inputs(method, info, params, base, tensors, math_dtype):
        blk = fn(b_blk, xs, model_params, params, info=sub, stats=stats, **extra)
        flat[a:b] = blk.reshape(-1)
    return result


def merge_whole(
    method: str,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    tensor_name: str = "t",
    seed: int = 0,
    external: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Merge whole tensors in-process with fully resolved parameters (tests, notebooks)."""
    ref = base if base is not None else tensors[0]
    info = PieceInfo.whole(tensor_name, tuple(ref.shape), seed)
    return merge_piece(
        get_method(method), info, base, tensors, model_params, params, external=external
    )


__all__ = ["BLOCK_ELEMENTS", "merge_piece", "merge_whole", "piece_stats"]
