"""Model Stock: interpolate between the base and the average of fine-tunes by their geometry.

Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV 2024,
https://arxiv.org/abs/2403.19522.

With offsets o_i = x_i - base, cos = mean over pairs i<j of <o_i, o_j> / max(|o_i||o_j|, 1e-6)
(clamped to [-1, 1]); t = N cos / (1 + (N - 1) cos) (t = 0 where the denominator is ~0);
result = t * mean(x_i) + (1 - t) * base. As in mergekit 0.1.5 the geometry is measured over the
whole tensor, or per row (last axis) with ``filter_wise``. Whole-tensor dot products are
accumulated as float64 per-unit partial sums, so chunked tensors give the unchunked result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import (
    Kernel,
    MergeMethod,
    ParamSpec,
    PieceInfo,
    StatRound,
    Stats,
    unit_sums,
)


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i, n)]


def _round_dots(info, base, tensors, model_params, params, prev) -> Stats:
    offs = [x - base for x in tensors]
    sums = [unit_sums(offs[i] * offs[j], info.unit) for i, j in _pairs(len(offs))]
    return {"cat:dots": torch.stack(sums, dim=1)}


def _t_from_cos(cos: torch.Tensor, n: int) -> torch.Tensor:
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denom), denom)
    return torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)


def model_stock(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """t * mean(tensors) + (1 - t) * base, with t from the offsets' mean pairwise cosine."""
    n = len(tensors)
    if params.get("filter_wise"):
        w0 = base.reshape(1, -1) if base.dim() < 2 else base
        offs = [x.reshape(w0.shape) - w0 for x in tensors]
        cos = []
        for i in range(n):
            for j in range(i + 1, n):
                norm = torch.linalg.vector_norm(offs[i], dim=-1) * torch.linalg.vector_norm(
                    offs[j], dim=-1
                )
                cos.append(((offs[i] * offs[j]).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
        t = _t_from_cos(torch.stack(cos).mean(dim=0).unsqueeze(-1), n)
        avg = sum(x.reshape(w0.shape) for x in tensors) / n
        return (t * avg + (1 - t) * w0).reshape(base.shape)
    totals = stats[0]["cat:dots"].sum(dim=0)  # whole-tensor dot products (see merge_whole)
    index = {pair: k for k, pair in enumerate(_pairs(n))}
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            norm = totals[index[(i, i)]].sqrt() * totals[index[(j, j)]].sqrt()
            cos.append((totals[index[(i, j)]] / norm.clamp(min=1e-6)).clamp(-1, 1))
    t = float(_t_from_cos(torch.stack(cos).mean(), n))
    avg = sum(tensors) / n
    return t * avg + (1 - t) * base


def _rounds(params: dict[str, Any], model_params) -> tuple:
    return () if params.get("filter_wise") else (StatRound(_round_dots),)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    kernel=Kernel(model_stock),
    params=(
        ParamSpec(
            "filter_wise",
            bool,
            "global",
            default=False,
            doc="geometry per row instead of per tensor",
        ),
    ),
    base="required",
    work_fixed=16,
    work_per_input=8,
    reference="https://arxiv.org/abs/2403.19522",
    doc="interpolate base and fine-tune average by their angle",
    inputs=(2, None),
    stat_rounds=_rounds,
    row_local=lambda params: bool(params.get("filter_wise")),
)
