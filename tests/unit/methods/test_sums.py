"""Whole-tensor sums that do not depend on how a tensor is cut into pieces or on torch's
threads (the statistics rounds of every method reduce through them)."""

from __future__ import annotations

import pytest
import torch

from raymerge.methods.base import FLAT_UNIT, row_sums, unit_sums


@pytest.fixture
def two_threads():
    """torch reduces a lone long row in per-thread partials only with several threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("unit", [40_000, FLAT_UNIT, 1_000_003])
def test_unit_sums_of_pieces_equal_the_whole(two_threads, unit):
    """A piece holding one long unit was summed in thread partials, the same unit inside a
    bigger piece serially: the last bits differed (units of ~1M elements, 2 threads)."""
    x = torch.randn(6 * unit + 123, generator=torch.Generator().manual_seed(0))
    whole = unit_sums(x, unit)
    for per in (1, 2, 4):
        step = per * unit
        parts = torch.cat([unit_sums(x[a : a + step], unit) for a in range(0, x.numel(), step)])
        assert torch.equal(parts, whole)


def test_row_sums_exact_and_row_independent(two_threads):
    x = torch.randn(5, 70_001, generator=torch.Generator().manual_seed(1))
    ref = row_sums(x)
    assert all(torch.equal(row_sums(x[i : i + 1]), ref[i : i + 1]) for i in range(5))
    assert torch.allclose(ref, x.double().sum(dim=1), rtol=1e-12, atol=1e-9)
    ones = torch.ones(3, 100_000)
    assert row_sums(ones).tolist() == [100_000.0] * 3  # exact where exact is possible
    assert row_sums(torch.ones(2, 0)).tolist() == [0.0, 0.0]
