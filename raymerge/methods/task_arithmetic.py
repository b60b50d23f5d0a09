"""Task arithmetic: add weighted task vectors (fine-tune minus base) to the base model.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, https://arxiv.org/abs/2212.04089.

With delta_i = x_i - base: result = base + lambda * sum_i w_i * delta_i, divided by sum_i w_i
when ``normalize`` (default false; a weight sum below 1e-8 counts as 1), following mergekit's
generalized task arithmetic. The TIES/DARE family shares this file's skeleton in later issues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from raymerge.methods.base import MergeMethod, ParamSpec


def task_arithmetic(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
) -> torch.Tensor:
    """base + lambda * (sum of weighted deltas), optionally normalised by the weight sum."""
    if base is None:
        raise ValueError("task_arithmetic needs a base model")
    weights = [float(p["weight"]) for p in model_params]
    mixed = torch.zeros_like(base)
    for x, w in zip(tensors, weights):
        mixed.add_(torch.sub(x, base), alpha=w)
    if params["normalize"]:
        total = sum(weights)
        mixed.div_(1.0 if abs(total) < 1e-8 else total)
    lam = float(params["lambda"])
    if lam != 1.0:
        mixed.mul_(lam)
    return mixed.add_(base)


TASK_ARITHMETIC = MergeMethod(
    name="task_arithmetic",
    kernel=task_arithmetic,
    params=(
        ParamSpec("weight", float, "model", required=True, doc="scale of each task vector"),
        ParamSpec("normalize", bool, "global", default=False, doc="divide by the sum of weights"),
        ParamSpec("lambda", float, "global", default=1.0, doc="scale of the merged task vector"),
    ),
    base="required",
    work_bytes_per_element=12,
    reference="https://arxiv.org/abs/2212.04089",
    doc="base + lambda * sum of weighted task vectors",
)
