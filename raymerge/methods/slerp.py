"""Spherical linear interpolation between the base model and one other model.

Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985; popularised for model
merging by mergekit. Reference: https://en.wikipedia.org/wiki/Slerp (mergekit cites the same).

As mergekit 0.1.5 does, interpolation is per output row: each row (leading axis; a 1-D tensor is
one value per row) is flattened and both rows are normalised. With dot = <a/|a|, b/|b|> clamped
to [-1, 1]: if |dot| > 0.9995 the rows are lerped, else
result = sin((1-t)θ)/sinθ · a + sin(tθ)/sinθ · b with θ = acos(dot), on the raw rows.
``t = 0`` gives the base. Row-local, so chunks of whole rows give the whole-tensor result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from raymerge.methods.base import MergeMethod, ParamSpec

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    **_: Any,
) -> torch.Tensor:
    """Row-wise SLERP from ``base`` (t=0) to ``tensors[0]`` (t=1)."""
    (other,) = tensors
    t = float(params["t"])
    shape = base.shape
    if base.numel() == 0:
        return base.clone()
    rows = shape[0] if base.dim() >= 1 else 1
    a = base.reshape(rows, -1)
    b = other.reshape(rows, -1)
    na = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=1, keepdim=True)
    na = torch.where(na > EPS, na, 1)
    nb = torch.where(nb > EPS, nb, 1)
    dot = ((a / na) * (b / nb)).sum(dim=1, keepdim=True).clamp(-1, 1)
    lin = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(lin, 0, dot))
    sin_theta = torch.sin(theta)
    ca = torch.where(lin, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    cb = torch.where(lin, t, torch.sin(t * theta) / sin_theta)
    return (ca * a + cb * b).reshape(shape)


SLERP = MergeMethod(
    name="slerp",
    kernel=slerp,
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
    work_fixed=24,
    work_per_input=4,
    reference="https://en.wikipedia.org/wiki/Slerp",
    doc="row-wise spherical interpolation between base and one model",
    inputs=(1, 1),
    row_local=lambda params: True,
)
