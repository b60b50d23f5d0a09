"""Linear merging: the weighted average of model weights ("model soups").

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022, https://arxiv.org/abs/2203.05482; and Choshen et
al., "Fusing finetuned models for better pretraining", 2022, https://arxiv.org/abs/2204.03044.

result = sum_i w_i * x_i, divided by sum_i w_i when ``normalize`` (default true), as mergekit.
Accumulation is in fp32 (or the math dtype if wider) whatever the storage dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec
from raymerge.methods.steps import scratch, step_ranges

LINEAR_STEP = 1 << 18  # elements per step on CPU: the two step buffers (2 MB) stay in cache


def linear(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    math_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    **_: Any,
) -> torch.Tensor:
    """Weighted sum of ``tensors`` (in their storage dtype), normalised by the weight sum when
    ``params['normalize']``, into ``out``.

    One pass over the inputs in cache-sized steps: each step of each input is converted into a
    reused buffer and accumulated as ``0 + w0 x0 + w1 x1 + ...`` (the same operations, so the
    same bits, as accumulating whole tensors), divided, and written to ``out`` in its dtype."""
    del base  # linear averages the listed models only, like mergekit
    weights = [float(p["weight"]) for p in model_params]
    md = math_dtype or torch.float32
    xs = [x.reshape(-1) for x in tensors]
    n, device = xs[0].numel(), xs[0].device
    if out is None:
        out = torch.empty(tensors[0].shape, dtype=md, device=device)
    res = out.reshape(-1)
    steps = step_ranges(n, device, LINEAR_STEP)
    acc, buf = scratch("linear", 2, max((e - s for s, e in steps), default=0), md, device)
    for s, e in steps:
        a = res[s:e] if res.dtype == md else acc[: e - s]
        for j, (x, w) in enumerate(zip(xs, weights)):
            v = x[s:e] if x.dtype == md else buf[: e - s].copy_(x[s:e])
            if j == 0:
                torch.add(_zero(md, device), v, alpha=w, out=a)
            else:
                a.add_(v, alpha=w)
        if params["normalize"]:
            a.div_(sum(weights))  # never 0: refused at plan time (_check)
        if a.data_ptr() != res[s:e].data_ptr():
            res[s:e].copy_(a)
    return out


def _zero(dtype: torch.dtype, device: Any) -> torch.Tensor:
    return torch.zeros((), dtype=dtype, device=device)


def _check(params: dict[str, Any], model_params: Sequence[dict[str, Any]]) -> list[str]:
    """Normalising by weights that sum to zero has no answer: a plan-time error."""
    total = sum(float(p["weight"]) for p in model_params)
    if params["normalize"] and total == 0:
        weights = [p["weight"] for p in model_params]
        return [
            f"linear: the weights {weights} sum to zero, so normalize: true cannot divide by "
            "their sum; change a weight or set normalize: false"
        ]
    return []


LINEAR = MergeMethod(
    name="linear",
    kernel=Kernel(linear, inputs="raw"),
    params=(
        ParamSpec("weight", float, "model", required=True, doc="weight of each model"),
        ParamSpec("normalize", bool, "global", default=True, doc="divide by the sum of weights"),
    ),
    base="ignored",
    work_fixed=8,
    work_per_input=0,
    reference="https://arxiv.org/abs/2203.05482",
    doc="weighted average of the models",
    check=_check,
    nonfinite_propagates=True,  # 0 * NaN and 0 * Inf are NaN: every input reaches the result
)
