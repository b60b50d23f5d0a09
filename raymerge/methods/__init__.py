"""Merge methods: pure torch kernels behind one explicit registry.

Adding a method is one file in this package plus one line in ``REGISTRY``. Nothing registers
itself as an import side effect. :func:`merge_whole` is the one way to merge a whole tensor
in-process (whole-tensor statistics first, then the kernel); the distributed path runs the same
steps on chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from raymerge.methods.base import MergeMethod, ParamSpec, PieceInfo, Stats, combine
from raymerge.methods.generalized_task_arithmetic import METHODS as GTA_METHODS
from raymerge.methods.linear import LINEAR
from raymerge.methods.model_stock import MODEL_STOCK
from raymerge.methods.passthrough import PASSTHROUGH
from raymerge.methods.slerp import SLERP

REGISTRY: dict[str, MergeMethod] = {
    m.name: m for m in (LINEAR, *GTA_METHODS, SLERP, MODEL_STOCK, PASSTHROUGH)
}


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; KeyError names the valid options."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; valid: {', '.join(REGISTRY)}") from None


BLOCK_ELEMENTS = 1 << 20  # work in cache-friendly blocks; temporaries never span a whole tensor


def _blocks(method: MergeMethod, info: PieceInfo, params: dict[str, Any]) -> list[tuple[int, int]]:
    """Element ranges [a, b) of the piece, relative to it. Each is a whole number of stat units
    (and of rows for row-local methods), so blockwise statistics equal whole-piece ones."""
    n = info.elem_end - info.elem_start
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
    t: torch.Tensor | None, a: int, b: int, shape: tuple[int, ...] | None, dtype: torch.dtype
):
    if t is None:
        return None
    blk = t.reshape(-1)[a:b]
    if shape is not None:
        blk = blk.reshape(shape)
    return blk.to(dtype)


def _sub(info: PieceInfo, a: int, b: int) -> PieceInfo:
    return PieceInfo(info.name, info.shape, info.elem_start + a, info.elem_start + b, info.seed)


def _block_shape(method: MergeMethod, info: PieceInfo, params: dict[str, Any], a: int, b: int):
    if method.row_local(params) and len(info.shape) >= 2 and math.prod(info.shape[1:]) > 0:
        return ((b - a) // math.prod(info.shape[1:]), *info.shape[1:])
    if (a, b) == (0, info.elem_end - info.elem_start) and info.elem_start == 0 and b == info.numel:
        return info.shape
    return (b - a,)


def _block_inputs(method, info, params, base, tensors, math_dtype):
    """Per block: (block range, block PieceInfo, base block, input blocks) in the math dtype."""
    for a, b in _blocks(method, info, params):
        shape = _block_shape(method, info, params, a, b)
        xs = [_view(x, a, b, shape, math_dtype) for x in tensors]
        yield (a, b), _sub(info, a, b), _view(base, a, b, shape, math_dtype), xs


def piece_stats(
    method: MergeMethod,
    info: PieceInfo,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    prev: Sequence[Stats],
    math_dtype: torch.dtype = torch.float32,
) -> Stats:
    """Partial statistics of round ``len(prev)`` for one piece (computed blockwise)."""
    rnd = method.stat_rounds(params, model_params)[len(prev)]
    return combine([
        rnd(sub, b, xs, model_params, params, list(prev))
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
    math_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge one piece, block by block.

    Inputs may be in their storage dtype: each block is converted to ``math_dtype`` on the fly.
    ``stats=None`` means the piece is the whole tensor and the statistics rounds run here;
    chunked pieces get the reduced ``stats``. The result goes into ``out`` (any dtype, the
    piece's number of elements) or a new tensor in the math dtype, shaped like the piece.
    """
    if stats is None:
        stats = []
        for _ in method.stat_rounds(params, model_params):
            stats.append(
                piece_stats(method, info, base, tensors, model_params, params, stats, math_dtype)
            )
    ref = base if base is not None else tensors[0]
    result = out if out is not None else torch.empty(ref.shape, dtype=math_dtype, device=ref.device)
    flat = result.reshape(-1)
    for (a, b), sub, b_blk, xs in _block_inputs(method, info, params, base, tensors, math_dtype):
        blk = method.kernel(b_blk, xs, model_params, params, info=sub, stats=stats)
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
) -> torch.Tensor:
    """Merge whole tensors in-process with fully resolved parameters (tests, notebooks)."""
    ref = base if base is not None else tensors[0]
    info = PieceInfo.whole(tensor_name, tuple(ref.shape), seed)
    return merge_piece(get_method(method), info, base, tensors, model_params, params)


__all__ = [
    "REGISTRY",
    "MergeMethod",
    "ParamSpec",
    "PieceInfo",
    "get_method",
    "merge_piece",
    "merge_whole",
]
