"""Chunk-invariant random numbers for randomised methods (DARE, DELLA).

mergekit draws masks from torch's global generator, so they depend on everything that ran
before. Here every element's number comes from a stream keyed by (seed, tensor name, stream,
global block): the same element gets the same number however the tensor is chunked or blocked,
on any worker, in any attempt.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import PieceInfo

RNG_BLOCK = 1 << 20  # random streams are generated in globally aligned blocks of this size


def _rng_block(info: PieceInfo, stream: int, block: int) -> torch.Tensor:
    """Uniform [0, 1) numbers of global block ``block`` of the tensor's element stream."""
    key = f"{info.seed}\0{info.name}\0{stream}\0{block}".encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    g = torch.Generator().manual_seed(seed)
    b0 = block * RNG_BLOCK
    return torch.rand(min(b0 + RNG_BLOCK, info.numel) - b0, generator=g)


class UniformStream:
    """Uniform [0, 1) numbers for the piece's elements, from a stream keyed by (seed, tensor
    name, ``stream``, global block of ``RNG_BLOCK`` elements). The same element gets the same
    number however the tensor is chunked or blocked, on any worker, in any attempt.

    Numbers are made on demand for element ranges of the piece (:meth:`take`), one RNG block at a
    time; the last block is kept, so walking a piece in increasing ranges generates every block
    once and never holds a piece-sized buffer."""

    def __init__(self, info: PieceInfo, stream: int, device: torch.device | str = "cpu") -> None:
        self.info, self.stream, self.device = info, stream, device
        self.block, self.vals = -1, None

    def _block(self, block: int) -> torch.Tensor:
        if block != self.block:
            self.block, self.vals = block, _rng_block(self.info, self.stream, block)
        return self.vals

    def take(self, start: int, end: int) -> torch.Tensor:
        """The numbers of piece elements [start, end)."""
        lo, hi = self.info.elem_start + start, self.info.elem_start + end
        parts = []
        pos = lo
        while pos < hi:
            b0 = pos // RNG_BLOCK * RNG_BLOCK
            take = min(hi, b0 + RNG_BLOCK) - pos
            parts.append(self._block(pos // RNG_BLOCK)[pos - b0 : pos - b0 + take])
            pos += take
        if not parts:
            return torch.empty(0, dtype=torch.float32, device=self.device)
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.to(self.device)


__all__ = ["RNG_BLOCK", "UniformStream"]
