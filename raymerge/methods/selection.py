"""Exact order statistics of |x| over a whole tensor, computable chunk by chunk.

TIES and breadcrumbs keep the k largest magnitudes of a task vector. mergekit argsorts the
flattened tensor (12 bytes per element: > 12 GB for a 70B embedding). Here the cutoff value is found
by a two-round radix select on the float32 bit patterns of |x| (non-negative floats order like
their bit patterns as integers):

1. a histogram of the high 16 bits (32,768 bins) locates the bin holding the wanted rank;
2. a histogram of the low 16 bits, among elements in that bin, gives the exact value.

Histograms are integer counts, so partials from any chunking add up to the same numbers, and the
threshold is the exact rank statistic (the same value ``torch.kthvalue`` would return).

``high_histogram`` / ``low_histogram`` define the two histograms; the kernels build the same counts
step by step from ``magnitude_keys`` -> ``high_keys`` / ``low_keys`` -> ``add_*_histogram``, which
avoid boolean passes and slow counting patterns (see ``low_keys``).

Tie rule at the cutoff (documented difference from mergekit, whose argsort keeps an arbitrary
subset of equal magnitudes): every element whose magnitude equals the cutoff value is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch


HI_BINS = 1 << 15
LO_BINS = 1 << 16


def magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of |x| in float32 (monotonic in |x|)."""
    return x.detach().abs().to(torch.float32).contiguous().view(torch.int32).reshape(-1)


def magnitude_keys(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``magnitude_bits(x)`` written into the int32 buffer ``out`` (same number of elements).

    For float32 ``x`` this is one integer pass (clear the sign bit; ``out`` may alias ``x``);
    other dtypes go through |x| rounded to float32, as ``magnitude_bits`` does."""
    flat = x.detach().reshape(-1)
    if flat.dtype == torch.float32:
        return torch.bitwise_and(flat.view(torch.int32), 0x7FFFFFFF, out=out)
    out.view(torch.float32).copy_(flat.abs())
    return out


def high_histogram(bits: torch.Tensor) -> torch.Tensor:
    return torch.bincount(bits >> 16, minlength=HI_BINS).to(torch.int64)


def high_keys(bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Keys whose ``add_high_histogram`` is ``high_histogram(bits)``."""
    return torch.bitwise_right_shift(bits, 16, out=out)


def add_high_histogram(hist: torch.Tensor, keys: torch.Tensor) -> None:
    hist += torch.bincount(keys, minlength=HI_BINS)


def low_keys(bits: torch.Tensor, high: int, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """Keys whose ``add_low_histogram`` is ``low_histogram(bits, high)`` (``tmp``: int32
    scratch of the same size; ``bits`` is left as it was).

    Selecting the elements of bin ``high`` takes slow boolean passes, and clamping the others
    onto two end bins makes the counting loop slow (two hot counters in random order).
    Instead w = bits ^ (high << 16) is the low 16 bits for elements of the bin (w < 2^16) and
    at least 2^16 for the others, whose key min(w, 2^16 | (w >> 16)) spreads them over bins
    2^16 + (1..32767) by their high bits (low bits spread badly: deltas of bf16 weights have
    few); only the first 2^16 bins are counted."""
    torch.bitwise_xor(bits, high << 16, out=out)
    torch.bitwise_right_shift(out, 16, out=tmp)
    tmp.bitwise_or_(LO_BINS)
    return torch.minimum(out, tmp, out=out)


def add_low_histogram(hist: torch.Tensor, keys: torch.Tensor) -> None:
    hist += torch.bincount(keys, minlength=LO_BINS + HI_BINS)[:LO_BINS]


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


# Order statistics of signed values (SCE's variances, Arcee Fusion's importances): int32 keys
# that order like the float32 values (negative floats flip their magnitude bits), histograms of
# their high 16 bits (offset to 0..65535) and, within one high bin, of their low 16 bits.
VALUE_BINS = 1 << 16


def value_keys(x: torch.Tensor) -> torch.Tensor:
    """Flat int32 keys of ``x`` rounded to float32, ordered as the values (-0.0 < +0.0)."""
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32).reshape(-1)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def value_high_histogram(keys: torch.Tensor) -> torch.Tensor:
    return torch.bincount((keys >> 16) + (1 << 15), minlength=VALUE_BINS).to(torch.int64)


def value_low_histogram(keys: torch.Tensor, high: int) -> torch.Tensor:
    sel = keys[((keys >> 16) + (1 << 15)) == high]
    return torch.bincount(sel & 0xFFFF, minlength=VALUE_BINS).to(torch.int64)


def key_value(high: int, low: int) -> float:
    """The float32 value whose key has high-histogram bin ``high`` and low bits ``low``."""
    key = torch.tensor([((high - (1 << 15)) << 16) | low], dtype=torch.int32)
    return float((key ^ ((key >> 31) & 0x7FFFFFFF)).view(torch.float32).item())


def ranked_values(high: torch.Tensor, lows: torch.Tensor, ranks: list[int]) -> list[float]:
    """The values at ascending 0-based ``ranks``, from the high histogram and one low histogram
    per rank (``lows[r]``: of the bin holding ``ranks[r]``, see :func:`rank_bins`)."""
    out = []
    for r, rank in enumerate(ranks):
        b, within = locate(high, rank)
        low, _ = locate(lows[r], within)
        out.append(key_value(b, low))
    return out


def rank_bins(high: torch.Tensor, ranks: list[int]) -> list[int]:
    """The high bin holding each ascending 0-based rank."""
    return [locate(high, rank)[0] for rank in ranks]
