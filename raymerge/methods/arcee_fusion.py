"""Arcee Fusion: keep the other model's values only where they matter most, by a dynamic
threshold on an importance score.

Arcee AI's fusion method (mergekit 0.1.5 cites https://arcee.ai). With b = base and p = the
other model: importance = |p - b| * KL, where KL = sum over the last dim of
P log(P / Q) with P = softmax(p) + 1e-8, Q = softmax(b) + 1e-8 (one KL per row of a matrix,
one for a whole vector); threshold = median + 1.5 (Q3 - Q1) of the importances (order
statistics at 0-based ranks int(float32(q) * (n - 1)) for q = 0.25, 0.5, 0.75, no
interpolation); result = b + (p - b) * (importance >= threshold).

Exactness: importances depend on whole rows only (the method is row-local), the quantiles are
exact order statistics of the whole tensor from a two-round radix select over the importances'
float32 bit patterns (:mod:`raymerge.methods.selection`), so a chunked tensor gives the
unchunked result bit for bit. The element math follows mergekit 0.1.5's operations in the math
dtype (fp32, or fp64 with ``dtype: float64``); rows of at most 16384 elements are summed as
torch sums them, longer ones in fixed blocks (torch's own sum of a long lone row depends on its
threads).

Differences from mergekit: for tensors of more than 10^6 elements mergekit estimates the
quartiles from 10^6 elements drawn with replacement from torch's global RNG (so its result
depends on everything that ran before); raymerge always uses the exact quartiles of all
elements, so the kept set can differ near the threshold there (the tests compare the kept
fraction). With fp64 math the quartiles are taken over the importances rounded to float32.
Like mergekit, the result is computed in the math dtype (mergekit writes float32 for bf16
inputs unless ``out_dtype`` is set; raymerge writes the configured or input dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods import selection
from raymerge.methods.base import Kernel, MergeMethod, PieceInfo, StatRound, Stats, row_sums

QUANTILES = (0.25, 0.5, 0.75)
EPS = 1e-8


def importance(params: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|p - b| times the KL divergence of softmax(p) from softmax(b) along the last dim."""
    diff = (params - base).abs()
    p = torch.softmax(params, dim=-1) + EPS
    q = torch.softmax(base, dim=-1) + EPS
    terms = p * torch.log(p / q)
    if terms.numel() == 0:
        return diff
    width = terms.shape[-1] if terms.dim() else 1
    kl = row_sums(terms.reshape(-1, width), terms.dtype)
    return diff * kl.reshape(*terms.shape[:-1], 1) if terms.dim() else diff * kl[0]


def _ranks(numel: int) -> list[int]:
    """mergekit's ranks: a float32 quantile times (n - 1), truncated."""
    q = torch.tensor(QUANTILES, dtype=torch.float32)
    return [int(r) for r in (q * (numel - 1)).long()]


def _round_high(info, base, tensors, model_params, params, prev) -> Stats:
    keys = selection.value_keys(importance(tensors[0], base))
    return {"hi": selection.value_high_histogram(keys)}


def _round_low(info, base, tensors, model_params, params, prev) -> Stats:
    if info.numel == 0:
        return {"lo": torch.zeros(3, selection.VALUE_BINS, dtype=torch.int64, device=base.device)}
    keys = selection.value_keys(importance(tensors[0], base))
    bins = selection.rank_bins(prev[0]["hi"], _ranks(info.numel))
    return {"lo": torch.stack([selection.value_low_histogram(keys, b) for b in bins])}


def threshold(info: PieceInfo, stats: Sequence[Stats], dtype: torch.dtype) -> torch.Tensor:
    """median + 1.5 (Q3 - Q1) of the whole tensor's importances, in ``dtype``."""
    q1, med, q3 = (
        torch.tensor(v, dtype=dtype)
        for v in selection.ranked_values(stats[0]["hi"], stats[1]["lo"], _ranks(info.numel))
    )
    return med + 1.5 * (q3 - q1)


def arcee_fusion(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """base + (other - base) where the importance reaches the dynamic threshold."""
    (other,) = tensors
    if base.numel() == 0:
        return base.clone()
    imp = importance(other, base)
    mask = (imp >= threshold(info, stats, imp.dtype).to(imp.device)).to(base.dtype)
    return base + (other - base) * mask


ARCEE_FUSION = MergeMethod(
    name="arcee_fusion",
    kernel=Kernel(arcee_fusion),
    params=(),
    base="required",
    work_fixed=24,
    work_per_input=0,
    reference="https://arcee.ai",
    doc="keep the other model's values where |delta| * row KL passes median + 1.5 IQR",
    inputs=(1, 1),
    stat_rounds=lambda params, model_params: (StatRound(_round_high), StatRound(_round_low)),
    row_local=lambda params: True,
)
