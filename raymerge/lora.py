"""Applying a LoRA update to a piece of a weight, in float32 (pure torch).

See :mod:`raymerge.plan.lora` for which tensors an adapter updates and which bytes a piece reads.
The update of rows [b0, b1) is computed one :data:`~raymerge.plan.lora.LORA_BLOCK` of rows at a
time, blocks fixed by the tensor, so every chunking of it adds the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from raymerge.plan.records import LoraUse
else:
    from raymerge._lazy import torch

from raymerge.io.ranges import decode
from raymerge.plan.lora import LORA_BLOCK, lora_rows


def lora_delta(use: LoraUse, bufs: Sequence[Any]) -> torch.Tensor:
    """The float32 update of the source's elements (flat), from the ranges
    :func:`~raymerge.plan.lora.lora_ranges` lists, in that order."""
    t = use.target
    rows, cols = t.shape
    b0, b1 = lora_rows(use)
    if t.layout == "rows":
        a = decode(bufs[0], t.a.dtype, t.a.shape).to(torch.float32)
        b = decode(bufs[1], t.b.dtype, (b1 - b0, t.b.shape[1])).to(torch.float32)
        blocks = [b[s : s + LORA_BLOCK] @ a for s in range(0, b1 - b0, LORA_BLOCK)]
    else:
        r = t.a.shape[0]
        a = torch.stack([decode(bufs[j], t.a.dtype, (b1 - b0,)) for j in range(r)]).to(
            torch.float32
        )
        b = decode(bufs[r], t.b.dtype, t.b.shape).to(torch.float32)
        blocks = [a[:, s : s + LORA_BLOCK].T @ b.T for s in range(0, b1 - b0, LORA_BLOCK)]
    delta = torch.cat(blocks).mul_(t.scale).reshape(-1)
    lo = use.elem_start - b0 * cols
    return delta[lo : lo + use.elem_end - use.elem_start]


def apply_lora(w: torch.Tensor, use: LoraUse, bufs: Sequence[Any]) -> torch.Tensor:
    """``w`` (a source's elements, any shape) with its LoRA update, in float32 (a new tensor:
    ``w`` may alias mapped or kept input bytes, which are never written)."""
    return (w.reshape(-1).to(torch.float32) + lora_delta(use, bufs)).reshape(w.shape)


__all__ = ["apply_lora", "lora_delta"]
