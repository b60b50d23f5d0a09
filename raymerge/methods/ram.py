"""RAM and RAM+ (tensor-local): merging task vectors by which models touch each element.

Reinforced Agent Merging, https://arxiv.org/abs/2601.13572 (the reference mergekit 0.1.5 cites
for ``ram`` and ``ramplus_tl``).

With task vectors tv_i = x_i - base and ``nz_i = |tv_i| > epsilon``, each element is touched by
``c = sum_i nz_i`` models: an element one model touches gets that model's delta, one several
touch gets the mean of their deltas, one none touches keeps the base (deltas with |tv| <=
epsilon are dropped). ``ramplus_tl`` also scales each model's *unique* part by
``lambda_i = 1 + r * clamp(rho_i, 0, alpha)``, ``rho_i = shared_i / max(unique_i, epsilon)``,
from the counts over the whole tensor of elements the model shares (c > 1) and owns alone
(c == 1).

The element math is mergekit 0.1.5's, operation for operation, in the math dtype (fp32, or fp64
with ``dtype: float64``; mergekit uses the input dtype), so fp32 results equal mergekit's bit for
bit. The ``ramplus_tl`` counts are integer statistics (exact over any chunking) and lambda is
computed in float32 as mergekit computes it. With no model besides the base the result is the
base, as in mergekit. Differences from mergekit: ``epsilon``, ``r`` and ``alpha`` must be >= 0
(mergekit accepts any value); mergekit's ``ramplus_tl`` writes float32 for bf16/fp16 inputs
unless ``out_dtype`` is set (its lambda is a float32 tensor), raymerge the configured or input
dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec, PieceInfo, StatRound, Stats


def _masks(base: torch.Tensor, tensors: Sequence[torch.Tensor], epsilon: float):
    """(task vectors [N, n], nonzero masks, counts [1, n], overlap, unique), as mergekit."""
    tv = torch.stack([x - base for x in tensors], dim=0).reshape(len(tensors), -1)
    nz = tv.abs() > epsilon
    counts = nz.sum(dim=0, keepdim=True)
    return tv, nz, counts, counts > 1, counts == 1


def ram(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """base + per element: the lone touching delta, or the mean of the touching deltas."""
    return _merge(base, tensors, float(params["epsilon"]), None)


def ramplus_tl(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """RAM with each model's unique part scaled by lambda_i (from the whole-tensor counts)."""
    lam = _lambdas(params, stats) if tensors else None
    return _merge(base, tensors, float(params["epsilon"]), lam)


def _merge(base, tensors, epsilon: float, lam: torch.Tensor | None) -> torch.Tensor:
    if not tensors:
        return base.clone()
    tv, nz, counts, overlap, unique = _masks(base, tensors, epsilon)
    tvz = tv * nz
    own = tvz * unique if lam is None else tvz * unique * lam.to(base.device).unsqueeze(-1)
    merged = (own + tvz * overlap / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape(base.shape)


def _lambdas(params: dict[str, Any], stats: Sequence[Stats]) -> torch.Tensor:
    """ramplus_tl's per-model factors, in float32 from int64 counts, as mergekit computes them."""
    shared, unique = stats[0]["shared"].cpu(), stats[0]["unique"].cpu()
    rho = shared / unique.clamp(min=float(params["epsilon"]))
    return 1 + float(params["r"]) * rho.clamp(min=0, max=float(params["alpha"]))


def _round_counts(info, base, tensors, model_params, params, prev) -> Stats:
    _, nz, _, overlap, unique = _masks(base, tensors, float(params["epsilon"]))
    return {"shared": (nz & overlap).sum(dim=1), "unique": (nz & unique).sum(dim=1)}


def _counts(params: dict[str, Any], model_params) -> tuple:
    return (StatRound(_round_counts),) if model_params else ()


EPSILON = ParamSpec(
    "epsilon", float, "global", default=1e-5, low=0.0, doc="deltas with |delta| <= this are dropped"
)
RAM = MergeMethod(
    name="ram",
    kernel=Kernel(ram),
    params=(EPSILON,),
    base="required",
    work_fixed=16,
    work_per_input=16,
    reference="https://arxiv.org/abs/2601.13572",
    doc="per element: the lone touching delta, or the mean of the touching ones",
    inputs=(0, None),
)
RAMPLUS_TL = MergeMethod(
    name="ramplus_tl",
    kernel=Kernel(ramplus_tl),
    params=(
        ParamSpec(
            "r", float, "global", default=0.1, low=0.0, doc="gain of the unique-part amplification"
        ),
        ParamSpec(
            "alpha", float, "global", default=0.2, low=0.0, doc="cap of the shared/unique ratio"
        ),
        EPSILON,
    ),
    base="required",
    work_fixed=16,
    work_per_input=16,
    reference="https://arxiv.org/abs/2601.13572",
    doc="RAM with each model's unique part scaled by its shared/unique count ratio",
    inputs=(0, None),
    stat_rounds=_counts,
)
