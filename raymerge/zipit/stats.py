"""Additive feature statistics and the correlation matrix ZipIt! matches on.

ZipIt! (Stoica et al., ICLR 2024, https://arxiv.org/abs/2305.03053, Sec. 4.1) matches features by
the correlation of their activations over the same inputs. The statistics here are *additive*
(count, sum, sum of outer products), so partial statistics computed on different workers or batches
combine exactly by addition, in any grouping; :func:`tree_reduce` fixes one grouping so the float
result is deterministic.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: A feature is constant when its variance is at most ``CONST_REL_VAR`` times its second moment
#: E[x^2] (i.e. std <= 1e-5 * rms). The test is relative because ``outer/n - mean^2`` cancels: for
#: a constant c the float64 residue is about ulp(c^2) * (rows summed), far above an absolute
#: threshold, yet far below 1e-10 * c^2. An all-zero feature (dead ReLU) has var = E[x^2] = 0.
CONST_REL_VAR = 1e-10
#: Two constant features are "the same constant" when their means differ by at most
#: ``CONST_MEAN_TOL * max(1, |mean_i|, |mean_j|)``.
CONST_MEAN_TOL = 1e-6


@dataclass
class FeatureStats:
    """Sufficient statistics of one feature space over the concatenated features of K models.

    Rows are inputs; columns are the features of model 0, then model 1, ... (``sizes`` gives the
    width of each model; ``sum(sizes) == C``). All tensors are float64, on the CPU unless made
    on a GPU (:meth:`empty`'s ``device``; :meth:`cpu` before they leave the device).
    """

    count: int
    sum: torch.Tensor  # float64 [C]
    outer: torch.Tensor  # float64 [C, C]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        self.sizes = tuple(int(s) for s in self.sizes)
        c = sum(self.sizes)
        if any(s < 0 for s in self.sizes):
            raise ValueError(f"feature sizes must be >= 0, got {self.sizes}")
        if tuple(self.sum.shape) != (c,) or tuple(self.outer.shape) != (c, c):
            raise ValueError(
                f"FeatureStats with sizes {self.sizes} (C={c}) needs sum [C] and outer [C, C], "
                f"got {tuple(self.sum.shape)} and {tuple(self.outer.shape)}"
            )
        self.sum = self.sum.to(torch.float64)
        self.outer = self.outer.to(torch.float64)

    @property
    def width(self) -> int:
        """C, the total number of features over all models."""
        return sum(self.sizes)

    @classmethod
    def empty(cls, sizes: Sequence[int], device: str | torch.device = "cpu") -> FeatureStats:
        """Zero statistics (the identity of ``+``) for models of widths ``sizes``."""
        c = sum(int(s) for s in sizes)
        return cls(
            count=0,
            sum=torch.zeros(c, dtype=torch.float64, device=device),
            outer=torch.zeros(c, c, dtype=torch.float64, device=device),
            sizes=tuple(int(s) for s in sizes),
        )

    def __reduce__(self):
        """Pickle the tensors as numpy arrays: with pickle protocol 5 (Ray) they travel as
        out-of-band buffers, written straight into the object store and read back without a
        copy (a pickled torch tensor goes through an in-memory ``torch.save``: measured +2 GB of
        peak RSS to return 1 GB of statistics from an actor)."""
        return (
            _rebuild,
            (self.count, self.sum.cpu().numpy(), self.outer.cpu().numpy(), self.sizes),
        )

    def cpu(self) -> FeatureStats:
        """These statistics on the CPU (itself when they are there already)."""
        if self.outer.device.type == "cpu":
            return self
        return FeatureStats(self.count, self.sum.cpu(), self.outer.cpu(), self.sizes)

    def update(self, feats: torch.Tensor) -> None:
        """Accumulate a batch of rows ``feats`` [N, C] (any float dtype; summed in float64)."""
        if feats.dim() != 2 or feats.shape[1] != self.width:
            raise ValueError(
                f"expected features [N, {self.width}] for sizes {self.sizes}, "
                f"got {tuple(feats.shape)}"
            )
        x = feats.detach().to(device=self.outer.device, dtype=torch.float64)
        self.count += int(x.shape[0])
        self.sum += x.sum(dim=0)
        self.outer.addmm_(x.T, x)  # in place: no [C, C] temporary

    def __add__(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both row sets (a new object; ``sizes`` must match)."""
        if not isinstance(other, FeatureStats):
            return NotImplemented
        if self.sizes != other.sizes:
            raise ValueError(f"cannot add FeatureStats of sizes {self.sizes} and {other.sizes}")
        return FeatureStats(
            count=self.count + other.count,
            sum=self.sum + other.sum,
            outer=self.outer + other.outer,
            sizes=self.sizes,
        )

    def mean(self) -> torch.Tensor:
        """Per-feature mean, float64 [C]."""
        self._require_rows()
        return self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Population (biased, divide-by-N) covariance ``outer/N - mean mean^T``, float64 [C, C].

        The biased form matches the official ZipIt! ``CovarianceMetric``; the normalisation
        cancels in :meth:`correlation` anyway. The result is symmetrised and its diagonal
        clamped at 0 (cancellation can leave tiny negative variances). Memory: the result plus
        row blocks of temporaries (no second [C, C] matrix).
        """
        mean = self.mean()
        cov = self.outer / self.count
        cov.addr_(mean, mean, alpha=-1.0)
        symmetrize_(cov)
        cov.diagonal().clamp_(min=0.0)
        return cov

    def variance(self) -> torch.Tensor:
        """The diagonal of :meth:`covariance` without the [C, C] matrix, float64 [C]."""
        mean = self.mean()
        return (self.outer.diagonal() / self.count - mean * mean).clamp_(min=0.0)

    def constant_mask(self) -> torch.Tensor:
        """Bool [C]: features that are constant over all rows seen (see ``CONST_REL_VAR``)."""
        second = self.outer.diagonal() / self.count
        return self.variance() <= CONST_REL_VAR * second

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every pair of features, float64 [C, C] in [-1, 1].

        ``cov_ij / (std_i std_j)`` for non-constant features. Constant features (see
        ``CONST_REL_VAR``) have no defined correlation; here a constant feature correlates 1.0
        with every other constant feature of the same value (means within
        ``CONST_MEAN_TOL * max(1, |mean_i|, |mean_j|)``) and 0.0 with everything else. So dead
        ReLU units (constant 0) are perfectly matchable with each other, and never preferred
        over a real match for a live unit. The diagonal is exactly 1. Computed in place over the
        covariance, in row blocks: peak memory is one [C, C] float64 matrix plus a block.
        """
        corr = self.covariance()
        mean = self.mean()
        const = self.constant_mask()
        std = corr.diagonal().sqrt()
        live = ~const
        scale_of = mean.abs()
        for a, b in _row_blocks(corr.shape[0]):
            blk = corr[a:b]
            both_live = live[a:b, None] & live[None, :]
            div = blk / torch.outer(std[a:b], std)
            scale = torch.maximum(scale_of[a:b, None], scale_of[None, :]).clamp(min=1.0)
            same_const = (
                const[a:b, None]
                & const[None, :]
                & ((mean[a:b, None] - mean[None, :]).abs() <= CONST_MEAN_TOL * scale)
            )
            blk.copy_(torch.where(both_live, div, torch.where(same_const, 1.0, 0.0)))
        corr.clamp_(-1.0, 1.0)
        corr.fill_diagonal_(1.0)
        return corr

    def _require_rows(self) -> None:
        if self.count <= 0:
            raise ValueError("FeatureStats has no rows; call update() first")


def _rebuild(count: int, s: Any, outer: Any, sizes: tuple[int, ...]) -> FeatureStats:
    """Unpickle :class:`FeatureStats`; the tensors may alias read-only buffers (Ray's object
    store), which is safe: statistics read from storage are never updated in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from_numpy warns that the buffer is not writable
        return FeatureStats(count, torch.from_numpy(s), torch.from_numpy(outer), sizes)


def _row_blocks(n: int, elements: int = 1 << 22) -> list[tuple[int, int]]:
    """Row ranges [a, b) of an [n, n] matrix holding about ``elements`` entries each."""
    step = max(1, elements // max(n, 1))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def symmetrize_(m: torch.Tensor, tile: int = 512) -> None:
    """``m = (m + m.T) / 2`` in place, a pair of square tiles at a time (no [C, C] temporary;
    tiles keep the transposed reads in cache)."""
    n = m.shape[0]
    for a in range(0, n, tile):
        for b in range(a, n, tile):
            upper = m[a : a + tile, b : b + tile]
            avg = (upper + m[b : b + tile, a : a + tile].T) / 2
            upper.copy_(avg)
            m[b : b + tile, a : a + tile].copy_(avg.T)


def tree_reduce(parts: Sequence[FeatureStats]) -> FeatureStats:
    """Sum ``parts`` as a balanced binary tree in list order (deterministic float result).

    Pairwise summation keeps the rounding error O(log P) instead of O(P) and makes the result
    independent of how the caller gathered the parts, as long as their order is fixed.
    """
    if len(parts) == 0:
        raise ValueError("tree_reduce needs at least one FeatureStats")
    if len(parts) == 1:
        only = parts[0]
        return FeatureStats(only.count, only.sum.clone(), only.outer.clone(), only.sizes)
    mid = len(parts) // 2
    return tree_reduce(parts[:mid]) + tree_reduce(parts[mid:])


def features_of_models(per_model: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-model features [N, C_k] (same N, same inputs) into [N, sum C_k]."""
    if len(per_model) == 0:
        raise ValueError("features_of_models needs at least one model's features")
    shapes = [tuple(f.shape) for f in per_model]
    if any(len(s) != 2 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"expected 2-D features [N, C_k] with one N, got shapes {shapes}")
    return torch.cat(list(per_model), dim=1)
