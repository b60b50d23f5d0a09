"""Spherical linear interpolation between the base model and one other model.

Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985; popularised for model
merging by mergekit, which cites https://en.wikipedia.org/wiki/Slerp.

As in mergekit 0.1.5, each tensor is one vector: with a = base and b = the other model, both
flattened, dot = <a/|a|, b/|b|> clamped to [-1, 1] (a norm below 1e-8 counts as 1); if
|dot| > 0.9995 the tensors are lerped, else result = sin((1-t)θ)/sinθ · a + sin(tθ)/sinθ · b with
θ = acos(dot), on the raw tensors. ``t = 0`` gives the base. The norms and the dot product are
whole-tensor statistics (float64 per-unit partial sums), so chunks give the unchunked result.
"""

from __future__ import annotations

import math
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

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def _round_norms(info, base, tensors, model_params, params, prev) -> Stats:
    (other,) = tensors
    return {
        "cat:aa": unit_sums(base * base, info.unit),
        "cat:bb": unit_sums(other * other, info.unit),
        "cat:ab": unit_sums(base * other, info.unit),
    }


def slerp(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """SLERP from ``base`` (t=0) to ``tensors[0]`` (t=1), treating each tensor as one vector."""
    (other,) = tensors
    t = float(params["t"])
    if base.numel() == 0:
        return base.clone()
    st = stats[0]
    na = math.sqrt(float(st["cat:aa"].sum()))
    nb = math.sqrt(float(st["cat:bb"].sum()))
    na = na if na > EPS else 1.0
    nb = nb if nb > EPS else 1.0
    dot = min(1.0, max(-1.0, float(st["cat:ab"].sum()) / (na * nb)))
    if abs(dot) > DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        s = math.sin(theta)
        ca, cb = math.sin((1 - t) * theta) / s, math.sin(t * theta) / s
    return torch.mul(base, ca).add_(other, alpha=cb)


SLERP = MergeMethod(
    name="slerp",
    kernel=Kernel(slerp),
    params=(
        ParamSpec(
            "t",
            float,
            "global",
            required=True,
            low=0.0,
            high=1.0,
            doc="0 = base, 1 = the other model",
        ),
    ),
    base="required",
    work_fixed=8,
    work_per_input=4,
    reference="https://en.wikipedia.org/wiki/Slerp",
    doc="spherical interpolation between base and one model",
    inputs=(1, 1),
    stat_rounds=lambda params, model_params: (StatRound(_round_norms),),
)
