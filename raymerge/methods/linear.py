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


def linear(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    **_: Any,
) -> torch.Tensor:
    """Weighted sum of ``tensors``; normalised by the weight sum when ``params['normalize']``."""
    del base  # linear averages the listed models only, like mergekit
    weights = [float(p["weight"]) for p in model_params]
    acc = torch.zeros_like(tensors[0])
    for x, w in zip(tensors, weights):
        acc.add_(x, alpha=w)
    if params["normalize"]:
        acc.div_(sum(weights))  # never 0: refused at plan time (_check)
    return acc


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
    kernel=Kernel(linear),
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
)
