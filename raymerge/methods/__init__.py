"""Merge methods: pure torch kernels behind one explicit registry.

Adding a method is one file in this package plus one line in ``REGISTRY``. Nothing registers
itself as an import side effect. :func:`merge_whole` is the one way to merge a whole tensor
in-process (whole-tensor statistics first, then the kernel); the distributed path runs the same
steps on chunks.
"""

from __future__ import annotations

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


def piece_stats(
    method: MergeMethod,
    info: PieceInfo,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    prev: Sequence[Stats],
) -> Stats:
    """Partial statistics of round ``len(prev)`` for one piece."""
    rnd = method.stat_rounds(params, model_params)[len(prev)]
    return rnd(info, base, tensors, model_params, params, list(prev))


def merge_piece(
    method: MergeMethod,
    info: PieceInfo,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    stats: Sequence[Stats] | None = None,
) -> torch.Tensor:
    """Merge one piece. ``stats=None`` means the piece is the whole tensor: the statistics rounds
    run here on it (one partial per round); chunked pieces get the reduced ``stats``."""
    if stats is None:
        stats = []
        for _ in method.stat_rounds(params, model_params):
            stats.append(
                combine([piece_stats(method, info, base, tensors, model_params, params, stats)])
            )
    return method.kernel(base, tensors, model_params, params, info=info, stats=stats)


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
