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

    from raymerge.zipit.matching import Matching
    from raymerge.zipit.spaces import Axis
else:
    from raymerge._lazy import torch


def _index(assign: torch.Tensor, expand: int) -> torch.Tensor:
    """Entry index along the axis -> merged entry index, for units ``expand`` entries wide."""
    offs = torch.arange(expand, device=assign.device)
    return (assign.to(torch.int64)[:, None] * expand + offs[None, :]).reshape(-1)


def zip_tensor(
    tensors: Sequence[torch.Tensor],
    models: Sequence[int],
    axes: Sequence[Axis],
    matchings: Mapping[str, Matching],
) -> torch.Tensor:
    """Zip the sources of one tensor.

    Args:
        tensors: the sources; ``tensors[s]`` comes from model ``models[s]``.
        models: the model index of each source.
        axes: how each tensor axis moves (axes in no space are left as they are).
        matchings: the matching of every space the axes name.

    Returns:
        The zipped tensor (float, the dtype of the sources).
    """
    out: torch.Tensor | None = None
    for x, k in zip(tensors, models):
        y = x
        for ax in axes:
            if ax.mode == "mean":
                continue
            m = matchings[ax.space]
            idx = _index(m.assign[k].to(y.device), ax.expand)
            if idx.numel() != y.shape[ax.dim]:
                raise ValueError(
                    f"axis {ax.dim} of size {y.shape[ax.dim]} does not match space "
                    f"{ax.space!r} ({m.assign[k].numel()} units x {ax.expand})"
                )
            shape = list(y.shape)
            shape[ax.dim] = m.sizes.numel() * ax.expand
            y = torch.zeros(shape, dtype=y.dtype, device=y.device).index_add_(ax.dim, idx, y)
        out = y if out is None else out.add_(y)
    assert out is not None, "a zipped tensor has at least one source"
    for ax in axes:
        if ax.mode in ("merge", "own"):
            m = matchings[ax.space]
            if ax.mode == "own":  # one model's members only; clusters it has none of stay 0
                if len(set(models)) != 1:
                    raise ValueError(f"axis mode 'own' needs one source model, got {models}")
                sizes = torch.bincount(m.assign[models[0]], minlength=m.n_out).clamp_(min=1)
            else:
                sizes = m.sizes
            div = sizes.to(device=out.device, dtype=out.dtype).repeat_interleave(ax.expand)
            view = [1] * out.dim()
            view[ax.dim] = -1
            out.div_(div.reshape(view))
        elif ax.mode == "mean":
            out.div_(len(tensors))
    return out
