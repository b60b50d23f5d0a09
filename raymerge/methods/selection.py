"""Exact order statistics of |x| over a whole tensor, computable chunk by chunk.

TIES and breadcrumbs keep the k largest magnitudes of a task vector. mergekit argsorts the
flattened tensor (12 bytes per element: > 12 GB for a 70B embedding). Here the cutoff value is found
by a two-round radix select on the float32 bit patterns of |x| (non-negative floats order like
their bit patterns as integers):

1. a histogram of the high 16 bits (32,768 bins) locates the bin holding the wanted rank;
2. a histogram of the low 16 bits, among elements in that bin, gives the exact value.

Histograms are integer counts, so partials from any chunking add up to the same numbers, and the
threshold is the exact rank statistic (the same value ``torch.kthvalue`` would return).

Tie rule at the cutoff (documented difference from mergekit, whose argsort keeps an arbitrary
subset of equal magnitudes): every element whose magnitude equals the cutoff value is kept.
"""

from __future__ import annotations

import torch

HI_BINS = 1 << 15
LO_BINS = 1 << 16


def magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of |x| in float32 (monotonic in |x|)."""
    return x.detach().abs().to(torch.float32).contiguous().view(torch.int32).reshape(-1)


def high_histogram(bits: torch.Tensor) -> torch.Tensor:
    return torch.bincount(bits >> 16, minlength=HI_BINS).to(torch.int64)


def locate(hist: torch.Tensor, rank: int) -> tuple[int, int]:
    """(bin holding ascending 0-based ``rank``, rank within that bin)."""
    cum = torch.cumsum(hist.cpu(), 0)
    b = int(torch.searchsorted(cum, torch.tensor([rank]), right=True).item())
    before = int(cum[b - 1].item()) if b > 0 else 0
    return b, rank - before


def low_histogram(bits: torch.Tensor, high: int) -> torch.Tensor:
    sel = bits[(bits >> 16) == high]
    return torch.bincount(sel & 0xFFFF, minlength=LO_BINS).to(torch.int64)


def value_of(high: int, low: int) -> float:
    bits = torch.tensor([(high << 16) | low], dtype=torch.int32)
    return float(bits.view(torch.float32).item())
