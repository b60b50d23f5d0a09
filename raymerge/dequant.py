"""Dequantising a piece of an FP8 tensor: codes x scales, in float32 (pure torch).

See :mod:`raymerge.plan.quant` for which checkpoints are quantised and how a piece's scales are
found. Block scales (DeepSeek-V3 style, ``weight_block_size: [bh, bw]``): element (r, c) of the
weight is ``codes[r, c] * scale[r // bh, c // bw]``; a per-row scale multiplies its row; a
per-tensor scale every element.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from raymerge.plan.records import ScaleRange
else:
    from raymerge._lazy import torch


def dequantize(codes: torch.Tensor, scale: torch.Tensor, where: ScaleRange) -> torch.Tensor:
    """Float32 values of a piece of codes (rows of the weight; a flat piece of a 1-row tensor
    for per-tensor scales), given the scale elements :class:`ScaleRange` describes."""
    x = codes.to(torch.float32)
    s = scale.to(torch.float32)
    if where.block is None:
        if s.numel() == 1:
            return x.mul_(s.reshape(()))
        return x.mul_(s.reshape(-1, *([1] * (x.dim() - 1))))
    bh, bw = where.block
    rows, cols = x.shape
    # each block row of scales spans bh weight rows; the piece starts skip_rows into the first
    per_row = s.repeat_interleave(bh, dim=0)[where.skip_rows : where.skip_rows + rows]
    return x.mul_(per_row.repeat_interleave(bw, dim=1)[:, :cols])


__all__ = ["dequantize"]
