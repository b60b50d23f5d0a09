"""Multi-SLERP: a weighted spherical mean of any number of models (or task vectors).

Goddard, "Multislerp", https://goddard.blog/posts/multislerp-wow-what-a-cool-idea (the
reference mergekit 0.1.5 cites). With D_i = x_i - base (x_i without a base model), whole-tensor
norms n_i, weights w (divided by their sum with ``normalize_weights``), unit vectors
u_i = D_i / (n_i + eps) and their weighted mean m = sum_i w_i u_i: the result is
``base + (sum_i w_i n_i) * m / |m|`` -- the mean direction, scaled to the weighted mean norm.
One model alone is returned as it is. If |m| < eps, two models fall back to
``base + w_0 D_0 + w_1 D_1`` and more raise an error, as in mergekit.

mergekit 0.1.5 then projects the unit vectors onto the tangent space at m/|m| and maps their
weighted sum back with the exponential map; that tangent sum is m - (m . m/|m|) m/|m| = 0 in
exact arithmetic whatever the inputs, so the step only adds rounding (mergekit's fp32 results
are within ~1 ulp of the closed form above). raymerge computes the closed form: the norms and
dot products (the Gram matrix of the D_i) are float64 whole-tensor statistics, reduced exactly
over chunks, and the result is one fixed linear combination of the D_i in the math dtype.

The exponential map of that zero tangent sum still multiplies the mean by cos(eps) (1 for the
default eps = 1e-8, 0.995 for eps = 0.1), and so does the closed form here.

Differences from mergekit: the closed form instead of the identically-zero tangent step
(rounding only); a zero task vector with ``eps = 0`` counts as a zero unit vector (mergekit
divides 0 by 0 and writes NaN); statistics in float64 rather than the input dtype; weights
whose sum is 0 with ``normalize_weights`` are refused when the config is planned (mergekit
divides by zero and writes inf/NaN); where every D_i is zero (a tensor no model changed) the
result is the base (mergekit raises its "weighted sum is zero" error for 3 or more models);
``eps`` must be >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from raymerge.methods.base import (
    Kernel,
    MergeMethod,
    ParamSpec,
    PieceInfo,
    StatRound,
    Stats,
    gram,
    gram_partials,
    task_vectors,
)


def _weights(model_params, params) -> list[float]:
    w = [float(p["weight"]) for p in model_params]
    if params["normalize_weights"]:
        total = sum(w)
        w = [x / total for x in w]
    return w


def _round_gram(info, base, tensors, model_params, params, prev) -> Stats:
    return {"cat:gram": gram_partials(task_vectors(base, tensors), info.unit)}


def coefficients(g: list[list[float]], w: list[float], eps: float) -> list[float] | None:
    """c with result = base + sum_i c_i D_i, from the Gram matrix of the D_i; None if the
    weighted mean of the unit vectors is shorter than ``eps``. All-zero D_i give c = 0."""
    n = len(w)
    norms = [math.sqrt(max(g[i][i], 0.0)) for i in range(n)]
    if not any(norms):
        return [0.0] * n  # every model equals the base here (mergekit: error for 3+ models)
    # u_i = D_i / d_i; a zero D_i (possible with eps = 0) is a zero unit vector
    inv = [1.0 / (x + eps) if x + eps > 0 else 0.0 for x in norms]
    m2 = sum(w[i] * w[j] * g[i][j] * inv[i] * inv[j] for i in range(n) for j in range(n))
    mean_norm = math.sqrt(max(m2, 0.0))
    if mean_norm < eps or mean_norm == 0.0:
        return None
    # mergekit's exponential map of the (zero) tangent sum leaves cos(|0| + eps) on the mean
    scale = sum(wi * ni for wi, ni in zip(w, norms)) * math.cos(eps)
    return [w[i] * scale * inv[i] / mean_norm for i in range(n)]


def multislerp(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo | None = None,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """(base +) the weighted spherical mean of the (task) vectors, at their weighted mean norm."""
    if len(tensors) == 1:
        return tensors[0].clone()
    deltas = task_vectors(base, tensors)
    w = _weights(model_params, params)
    c = coefficients(gram(stats[0]["cat:gram"], len(w)), w, float(params["eps"]))
    if c is None:
        if len(tensors) != 2:
            name = info.name if info is not None else "?"
            raise ValueError(
                f"multislerp: the weighted sum of the unit vectors of tensor {name!r} is zero "
                "(antipodal inputs whose weights balance out); use different weights"
            )
        c = w  # mergekit's linear fallback: w_0 D_0 + w_1 D_1
    out = deltas[0] * c[0]
    for d, ci in zip(deltas[1:], c[1:]):
        out.add_(d, alpha=ci)
    return out if base is None else out.add_(base)


def _check(params: dict[str, Any], model_params) -> list[str]:
    if len(model_params) > 1 and params["normalize_weights"]:
        if sum(float(p["weight"]) for p in model_params) == 0:
            return ["multislerp: the weights sum to 0, so normalize_weights cannot divide by them"]
    return []


MULTISLERP = MergeMethod(
    name="multislerp",
    kernel=Kernel(multislerp),
    params=(
        ParamSpec("weight", float, "model", required=True, doc="weight of each model"),
        ParamSpec(
            "normalize_weights", bool, "global", default=True, doc="divide the weights by their sum"
        ),
        ParamSpec("eps", float, "global", default=1e-8, low=0.0, doc="numerical floor"),
    ),
    base="optional",
    work_fixed=8,
    work_per_input=8,
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    doc="weighted spherical mean of any number of models (task vectors with a base)",
    inputs=(1, None),
    stat_rounds=lambda params, model_params: (
        (StatRound(_round_gram),) if len(model_params) > 1 else ()
    ),
    check=_check,
)
