"""Apply matchings to one tensor: ``W' = sum_k M_out^k W^k U_in^k`` without dense matrices.

A matching maps every unit of model k to a cluster (``assign[k]``) and counts the members of each
cluster over all models (``sizes``). So M^k and U^k are scaled assignment matrices and the
products reduce to ``index_add`` along the tensor axes: the sum over a cluster's members (U), then
one division by the cluster sizes (M). O(elements), never a [C, C] matrix. ZipIt!, Stoica et al.,
ICLR 2024, https://arxiv.org/abs/2305.03053.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch


def _index(assign: torch.Tensor, expand: int) -> torch.Tensor:
    """Entry index along the axis -> merged entry index, for units ``expand`` entries wide."""
    offs = torch.arange(expand, device=assign.device)
    return (assign.to(torch.int64)[:, None] * expand + offs[None, :]).reshape(-1)


def zip_tensor(
    tensors: Sequence[torch.Tensor],
    models: Sequence[int],
    axes: Sequence[Sequence],
    matchings: Mapping[str, tuple[Sequence[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """Zip the sources of one tensor.

    ``tensors[s]`` comes from model ``models[s]``; ``axes`` holds ``(dim, space, mode, expand)``
    entries (see :class:`raymerge.zipit.spaces.Axis`); ``matchings[space] = (assign per model,
    sizes)``. Axes in no space are left as they are.
    """
    out: torch.Tensor | None = None
    for x, k in zip(tensors, models):
        y = x
        for dim, space, mode, expand in axes:
            if mode == "mean":
                continue
            assign, sizes = matchings[space]
            idx = _index(assign[k].to(y.device), expand)
            if idx.numel() != y.shape[dim]:
                raise ValueError(
                    f"axis {dim} of size {y.shape[dim]} does not match space {space!r} "
                    f"({assign[k].numel()} units x {expand})"
                )
            shape = list(y.shape)
            shape[dim] = sizes.numel() * expand
            y = torch.zeros(shape, dtype=y.dtype, device=y.device).index_add_(dim, idx, y)
        out = y if out is None else out.add_(y)
    assert out is not None, "a zipped tensor has at least one source"
    for dim, space, mode, expand in axes:
        if mode == "merge":
            sizes = matchings[space][1].to(device=out.device, dtype=out.dtype)
            div = sizes.repeat_interleave(expand)
            view = [1] * out.dim()
            view[dim] = -1
            out.div_(div.reshape(view))
        elif mode == "mean":
            out.div_(len(tensors))
    return out
