"""Passthrough: copy one model's tensor (optionally scaled); the building block of frankenmerges.

Used with ``slices:`` to stack layer ranges of one or more models into a new model (e.g. Goliath,
SOLAR's depth up-scaling: Kim et al., 2023, https://arxiv.org/abs/2312.15166).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec


def passthrough(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    **_: Any,
) -> torch.Tensor:
    """The single input tensor, times ``scale`` when given."""
    (x,) = tensors
    scale = model_params[0].get("scale")
    return x.clone() if scale is None else x * float(scale)


PASSTHROUGH = MergeMethod(
    name="passthrough",
    kernel=Kernel(passthrough),
    params=(ParamSpec("scale", float, "model", default=None, doc="multiply the tensor by this"),),
    base="ignored",
    work_fixed=4,
    work_per_input=0,
    reference="https://arxiv.org/abs/2312.15166",
    doc="copy one model's tensors; with slices: stack layer ranges (frankenmerge)",
    inputs=(1, 1),
)
