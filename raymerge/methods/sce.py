"""SCE: select task-vector elements by their variance across models, calculate per-model weights,
erase sign conflicts.

Wan et al., "FuseChat: Knowledge Fusion of Chat Models", 2024, https://arxiv.org/abs/2408.07990
(the reference mergekit 0.1.5 cites). With task vectors tv_i = x_i - base:

1. **select** (``select_topk`` < 1): keep the elements whose variance across the models
   (population variance, per element) is among the ``k = int(float32(#nonzero variances) *
   select_topk)`` largest of the tensor, for every model alike (``select_topk`` <= 0, or k = 0:
   keep nothing);
2. **calculate**: w_i = mean(tv_i^2) / sum_j mean(tv_j^2) over the whole (selected) tensor, or
   1/N when that sum is below 1e-6;
3. **erase**: the elected sign is that of sum_i tv_i (0 counts as +); a model contributes where its
   sign agrees; result = base + sum_i w_i agree_i tv_i / max(sum_i w_i agree_i, 1e-6).

The per-element math follows mergekit 0.1.5's operations in the math dtype (fp32, or fp64 with
``dtype: float64``). Chunks: the count of nonzero variances and the k-th largest variance are
integer statistics (an exact two-round radix select over the variances' float32 bit patterns,
:mod:`raymerge.methods.selection`), the mean squares float64 per-unit sums, so a chunked tensor
gives the unchunked result bit for bit.

Differences from mergekit: every element whose variance equals the k-th largest is kept
(mergekit's ``topk`` keeps an arbitrary k of tied elements); the mean squares are float64 sums
(mergekit: input dtype), which matters only for the weights' last bits and, at the edge, for
the 1e-6 uniform-weight test; with fp64 math the variances are ranked as float32 values;
``select_topk`` must be in [0, 1] (mergekit accepts any value: > 1 acts as 1, < 0 as 0).
``int8_mask`` is accepted and changes nothing (in mergekit it only changes a mask's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods import selection
from raymerge.methods.base import (
    Kernel,
    MergeMethod,
    ParamSpec,
    PieceInfo,
    StatRound,
    Stats,
    total,
    unit_sums,
)


def _task_vectors(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x - base for x in tensors], dim=0)


def _variance(tvs: torch.Tensor) -> torch.Tensor:
    return torch.var(tvs, dim=0, unbiased=False)


def _k(nonzero: int, select_topk: float) -> int:
    """mergekit's k: an int64 count times a float is a float32, then truncated."""
    return int(torch.tensor(nonzero, dtype=torch.int64) * select_topk)


def _round_high(info, base, tensors, model_params, params, prev) -> Stats:
    var = _variance(_task_vectors(base, tensors))
    return {
        "nonzero": torch.count_nonzero(var).to(torch.int64),
        "hi": selection.value_high_histogram(selection.value_keys(var)),
    }


def _rank(info: PieceInfo, params: dict[str, Any], stats: Sequence[Stats]) -> int | None:
    """Ascending rank of the selection cutoff among the variances, or None: keep nothing."""
    k = _k(int(stats[0]["nonzero"]), float(params["select_topk"]))
    return info.numel - k if k > 0 else None


def _round_low(info, base, tensors, model_params, params, prev) -> Stats:
    rank = _rank(info, params, prev)
    if rank is None:
        return {"lo": torch.zeros(selection.VALUE_BINS, dtype=torch.int64, device=base.device)}
    (b,) = selection.rank_bins(prev[0]["hi"], [rank])
    keys = selection.value_keys(_variance(_task_vectors(base, tensors)))
    return {"lo": selection.value_low_histogram(keys, b)}


def _masked(info, base, tensors, params, stats) -> torch.Tensor:
    """The stacked task vectors, zeroed outside the selection (``stats``: the rounds so far)."""
    tvs = _task_vectors(base, tensors)
    topk = float(params["select_topk"])
    if topk >= 1:
        return tvs
    if topk <= 0 or _rank(info, params, stats) is None:
        return tvs * torch.zeros((), dtype=tvs.dtype, device=tvs.device)
    (cut,) = selection.ranked_values(
        stats[0]["hi"], stats[1]["lo"].unsqueeze(0), [_rank(info, params, stats)]
    )
    keep = _variance(tvs).to(torch.float32) >= cut
    return tvs * keep.to(tvs.dtype).unsqueeze(0)


def _round_squares(info, base, tensors, model_params, params, prev) -> Stats:
    tvs = _masked(info, base, tensors, params, prev)
    return {"cat:sq": torch.stack([unit_sums(t * t, info.unit) for t in tvs], dim=1)}


def sce(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """base + the sign-consensus mean of the selected task vectors, weighted by mean squares."""
    if not tensors or base.numel() == 0:
        return base.clone()
    tvs = _masked(info, base, tensors, params, stats)
    n = len(tensors)
    sq = stats[-1]["cat:sq"]
    means = [float(total(sq[:, i])) / info.numel for i in range(n)]
    q = sum(means)
    w = [1.0 / n] * n if abs(q) < 1e-6 else [m / q for m in means]
    weights = torch.tensor(w, dtype=tvs.dtype, device=tvs.device).reshape(-1, *[1] * base.dim())
    sign = tvs.sign()
    elected = (tvs.sum(dim=0) >= 0).to(tvs.dtype) * 2 - 1
    erased = weights * (sign == elected)
    merged = (tvs * erased).sum(dim=0)
    return base + merged / erased.sum(dim=0).clamp(min=1e-6)


def _rounds(params: dict[str, Any], model_params) -> tuple:
    if not model_params:
        return ()
    squares = (StatRound(_round_squares),)
    if 0 < float(params["select_topk"]) < 1:
        return (StatRound(_round_high), StatRound(_round_low), *squares)
    return squares


SCE = MergeMethod(
    name="sce",
    kernel=Kernel(sce),
    params=(
        ParamSpec(
            "int8_mask",
            bool,
            "global",
            default=False,
            doc="accepted for mergekit compatibility; no effect",
        ),
        ParamSpec(
            "select_topk",
            float,
            "global",
            default=1.0,
            low=0.0,
            high=1.0,
            doc="fraction of elements kept, by variance across models (1: all)",
        ),
    ),
    base="required",
    work_fixed=16,
    work_per_input=20,
    reference="https://arxiv.org/abs/2408.07990",
    doc="variance-based selection, mean-square weights, TIES sign consensus",
    inputs=(0, None),
    stat_rounds=_rounds,
)
