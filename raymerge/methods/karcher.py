"""Karcher mean: the Riemannian (Frechet) mean of the models' directions on the unit sphere.

https://arxiv.org/abs/2603.04972 (the reference mergekit 0.1.5 cites). Every input counts
equally, a configured ``base_model`` included (mergekit's base policy is "ignored": the base is
just one more input, appended after the listed models when it is not among them).

With whole-tensor norms n_i and unit vectors u_i = x_i / n_i, the inputs with n_i > tol get
equal weights a = 1/#valid; m starts at their normalised mean (the first valid u_i if that mean
is shorter than tol); then up to ``max_iter`` times: theta_i = acos(clamp(<m, u_i>, -1, 1)),
T = sum over theta_i >= tol of a theta_i / sin(theta_i) (u_i - <m, u_i> m); stop if |T| < tol;
m = cos|T| m + sin|T| T/|T|, renormalised when |m| > tol. The result is mean(n_i) * m (the plain
mean of all norms). No valid input gives zeros; a single input is returned as it is.

**Chunks, in one statistics round.** m and T are always linear combinations of the u_i, so the
whole iteration runs on coefficient vectors with the unit Gram matrix G_ij / (n_i n_j):
<m, u_i> = (c G^)_i, |T|^2 = tau' G^ tau, |m|^2 = c' G^ c. The only data statistics are the
Gram matrix G_ij = <x_i, x_j> (float64 per-unit partials, reduced exactly over any chunking);
the iteration itself -- its count, and every tolerance test mergekit makes, in the same order --
runs on N x N float64 numbers, and the kernel writes sum_j (mean(n) c_j / n_j) x_j. So a
tensor needs one statistics pass whatever ``max_iter`` is, and a chunked tensor gives the
unchunked result bit for bit.

Differences from mergekit 0.1.5 (vector ops in the input dtype, norms in float32): the
iteration is exact in float64 up to rounding, so the iteration count can differ from
mergekit's where |T| is within rounding of tol, and tolerances far below float64's resolution
of the Gram form (|T| ~ 1e-8 of |m|) cannot be reached (the iteration then runs all
``max_iter`` steps, each moving m by rounding noise); results agree with mergekit's fp32 ones
to fp32 rounding in the tests. ``max_iter`` and ``tol`` must be >= 0.
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
    gram,
    gram_partials,
)


def _round_gram(info, base, tensors, model_params, params, prev) -> Stats:
    return {"cat:gram": gram_partials(list(tensors), info.unit)}


def _quad(g: list[list[float]], a: list[float], b: list[float]) -> float:
    n = len(a)
    return sum(a[i] * g[i][j] * b[j] for i in range(n) for j in range(n))


def _unit(vec: list[float], g: list[list[float]]) -> float:
    return math.sqrt(max(_quad(g, vec, vec), 0.0))


def coefficients(g: list[list[float]], max_iter: int, tol: float) -> list[float] | None:
    """c with result = sum_j c_j x_j, from the Gram matrix of the inputs (None: all zeros)."""
    n = len(g)
    norms = [math.sqrt(max(g[i][i], 0.0)) for i in range(n)]
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return None
    # the unit Gram matrix of the valid inputs (a zero vector's unit vector is zero)
    k = len(valid)
    gu = [
        [g[i][j] / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else 0.0 for j in valid]
        for i in valid
    ]
    a = 1.0 / k
    c = [a] * k
    mean_norm = _unit(c, gu)
    if mean_norm < tol:
        c = [1.0 if j == 0 else 0.0 for j in range(k)]  # the first valid unit vector
    else:
        c = [x / mean_norm for x in c]
    for _ in range(max_iter):
        dots = [min(1.0, max(-1.0, sum(c[j] * gu[j][i] for j in range(k)))) for i in range(k)]
        tau = [0.0] * k
        for i in range(k):
            theta = math.acos(dots[i])
            if theta < tol:
                continue
            f = a * theta / math.sin(theta)
            tau[i] += f
            tau = [t - f * dots[i] * cj for t, cj in zip(tau, c)]
        tn = _unit(tau, gu)
        if tn < tol:
            break
        c = [math.cos(tn) * cj + math.sin(tn) * t / tn for cj, t in zip(c, tau)]
        un = _unit(c, gu)
        if un > tol:
            c = [x / un for x in c]
    scale = sum(norms) / n
    out = [0.0] * n
    for j, i in enumerate(valid):
        out[i] = scale * c[j] / norms[i] if norms[i] > 0 else 0.0
    return out


def karcher(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """The Karcher mean of the inputs' directions, scaled to the mean of their norms."""
    if len(tensors) == 1:
        return tensors[0].clone()
    g = gram(stats[0]["cat:gram"], len(tensors))
    c = coefficients(g, int(params["max_iter"]), float(params["tol"]))
    if c is None:
        return torch.zeros_like(tensors[0])
    out = tensors[0] * c[0]
    for x, cj in zip(tensors[1:], c[1:]):
        out.add_(x, alpha=cj)
    return out


KARCHER = MergeMethod(
    name="karcher",
    kernel=Kernel(karcher),
    params=(
        ParamSpec(
            "max_iter", int, "global", default=10, low=0, doc="most Riemannian gradient steps"
        ),
        ParamSpec(
            "tol", float, "global", default=1e-5, low=0.0, doc="convergence and degeneracy floor"
        ),
    ),
    base="input",
    work_fixed=8,
    work_per_input=0,
    reference="https://arxiv.org/abs/2603.04972",
    doc="Riemannian mean of the models' directions, at their mean norm",
    inputs=(1, None),
    stat_rounds=lambda params, model_params: (
        (StatRound(_round_gram),) if len(model_params) > 1 else ()
    ),
)
