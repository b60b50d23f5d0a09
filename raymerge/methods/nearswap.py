"""NearSwap: take the other model's value where it is near the base, move toward it elsewhere.

Introduced with https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001 (the reference
mergekit 0.1.5 cites). With a = base and b = the other model, per element
``w = clamp(t / max(|a - b|, 1e-6), 0, 1)`` and ``result = w * b + (1 - w) * a``: elements
within ``t`` of each other become b, the others move toward b by the fraction t / |a - b|.

Elementwise, the same operations as mergekit 0.1.5 in the math dtype (fp32, or fp64 with
``dtype: float64``; mergekit uses the input dtype), so fp32 results equal mergekit's bit for
bit. No difference from mergekit besides the math dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec, PieceInfo, Stats


def nearswap(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """w * other + (1 - w) * base with w = clamp(t / max(|base - other|, 1e-6), 0, 1)."""
    (other,) = tensors
    t = float(params["t"])
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


NEARSWAP = MergeMethod(
    name="nearswap",
    kernel=Kernel(nearswap),
    params=(
        ParamSpec(
            "t",
            float,
            "global",
            required=True,
            doc="distance below which the other model's value is taken (<= 0: the base)",
        ),
    ),
    base="required",
    work_fixed=16,
    work_per_input=0,
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    doc="take the other model's value where it is within t of the base",
    inputs=(1, 1),
)
