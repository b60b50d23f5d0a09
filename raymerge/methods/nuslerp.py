"""NuSLERP: spherical interpolation of two models (or of their task vectors), per tensor, row or
column.

mergekit's "NuSLERP" (mergekit 0.1.5 sets no reference URL; spherical interpolation is Shoemake,
SIGGRAPH 1985, https://en.wikipedia.org/wiki/Slerp). With the two non-base models A, B (config
order) and weights w_A, w_B: ``t = w_B / (w_A + w_B)`` (0.5 when |w_A + w_B| < 1e-6; no clamp,
so t may extrapolate). v0, v1 = A - base, B - base when a base model is configured, else A, B.
Per vector: ``c = clamp(<v0, v1> / (max(|v0|, 1e-7) max(|v1|, 1e-7)), -1, 1)``; where
``1 - c^2 <= 1e-16`` the result is ``(1 - t) v0 + t v1``, else
``(sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta)`` with theta = acos(c), on the
unnormalised vectors; plus the base. A zero vector gives c = 0 (so t = 0.5 of a zero v0 gives
sin(pi/4) v1, as in mergekit). The vectors are:

- ``nuslerp_flatten: true`` (default): the whole tensor;
- ``nuslerp_flatten: false``: each vector along the last dim (one per row of a matrix);
- ``nuslerp_flatten: false, nuslerp_row_wise: true``: each vector along dim 0 (one per column
  of a matrix). Rank <= 1 tensors are always one vector.

Exactness over chunks: whole-tensor norms and the dot product are float64 per-unit statistics;
last-dim vectors lie within rows (``row_local``); dim-0 vectors span every row, so those tensors
are merged whole (``whole_if``; the planner refuses one that does not fit ``--job-memory``).

Differences from mergekit 0.1.5 (which computes in the input dtype): the norms, dot products
and coefficients are computed in float64 and the blend in the math dtype (fp32, or fp64 with
``dtype: float64``), so results differ by rounding only (a few fp32 ulps); the colinear test is
applied to the float64 cosine, where mergekit's fp32 one fires only when c^2 rounds to 1.0 --
both branches agree there to rounding.
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
    row_sums,
    task_vectors,
    total,
    unit_sums,
)

NORM_EPS = 1e-7
COLINEAR_EPS = 1e-8


def _t(model_params: Sequence[dict[str, Any]]) -> float:
    w0, w1 = (float(p["weight"]) for p in model_params)
    total = w0 + w1
    return 0.5 if abs(total) < 1e-6 else w1 / total


def coefficients(
    aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor, t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 (c0, c1) per vector with result = c0 v0 + c1 v1, from |v0|^2, |v1|^2, <v0, v1>."""
    n0 = aa.sqrt().clamp(min=NORM_EPS)
    n1 = bb.sqrt().clamp(min=NORM_EPS)
    cos = (ab / (n0 * n1)).clamp(-1, 1)
    colinear = (1 - cos * cos) <= COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    s = torch.sin(theta)
    safe = torch.where(colinear, torch.ones_like(s), s)
    c0 = torch.where(colinear, torch.full_like(s, 1 - t), torch.sin((1 - t) * theta) / safe)
    c1 = torch.where(colinear, torch.full_like(s, t), torch.sin(t * theta) / safe)
    return c0, c1


def _mode(params: dict[str, Any]) -> str:
    if params["nuslerp_flatten"]:
        return "tensor"
    return "columns" if params["nuslerp_row_wise"] else "rows"


def _round_norms(info, base, tensors, model_params, params, prev) -> Stats:
    v0, v1 = task_vectors(base, tensors)
    return {
        "cat:aa": unit_sums(v0 * v0, info.unit),
        "cat:bb": unit_sums(v1 * v1, info.unit),
        "cat:ab": unit_sums(v0 * v1, info.unit),
    }


def _per_vector(v0: torch.Tensor, v1: torch.Tensor, t: float, columns: bool) -> torch.Tensor:
    """The blend with one vector per last-dim slice (``columns``: per dim-0 slice)."""
    if columns and v0.dim() >= 2:
        return _per_vector(v0.transpose(0, -1), v1.transpose(0, -1), t, False).transpose(0, -1)
    width = v0.shape[-1] if v0.dim() else 1
    if v0.numel() == 0 or width == 0:
        return v0.clone()
    m0, m1 = v0.reshape(-1, width), v1.reshape(-1, width)
    c0, c1 = coefficients(row_sums(m0 * m0), row_sums(m1 * m1), row_sums(m0 * m1), t)
    out = m0 * c0.to(v0.dtype).unsqueeze(1) + m1 * c1.to(v0.dtype).unsqueeze(1)
    return out.reshape(v0.shape)


def nuslerp(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """(base +) the slerp of the two models' vectors at t = w_B / (w_A + w_B)."""
    t = _t(model_params)
    v0, v1 = task_vectors(base, tensors)
    mode = _mode(params)
    if mode == "tensor":
        st = stats[0]
        sums = [total(st[k]).reshape(1) for k in ("cat:aa", "cat:bb", "cat:ab")]
        c0, c1 = (float(c) for c in coefficients(*sums, t))
        out = torch.mul(v0, c0).add_(v1, alpha=c1)
    else:
        out = _per_vector(v0, v1, t, mode == "columns")
    return out if base is None else out.add_(base)


NUSLERP = MergeMethod(
    name="nuslerp",
    kernel=Kernel(nuslerp),
    params=(
        ParamSpec(
            "weight", float, "model", required=True, doc="interpolation weight (the ratio counts)"
        ),
        ParamSpec(
            "nuslerp_row_wise",
            bool,
            "global",
            default=False,
            doc="with nuslerp_flatten false: one vector per column (dim 0) instead of per row",
        ),
        ParamSpec(
            "nuslerp_flatten",
            bool,
            "global",
            default=True,
            doc="treat the whole tensor as one vector",
        ),
    ),
    base="optional",
    work_fixed=24,
    work_per_input=8,
    reference="https://en.wikipedia.org/wiki/Slerp",
    doc="slerp of two models (or task vectors with a base) per tensor, row or column",
    inputs=(2, 2),
    stat_rounds=lambda params, model_params: (
        (StatRound(_round_norms),) if params["nuslerp_flatten"] else ()
    ),
    row_local=lambda params: _mode(params) == "rows",
    whole_if=lambda params: _mode(params) == "columns",
)
