"""Feature matchings for ZipIt! and its baselines (permutation, identity).

Reference: Stoica et al., "ZipIt! Merging Models from Different Tasks without Training",
ICLR 2024, https://arxiv.org/abs/2305.03053 (Sec. 4.1 "zip" operation, Sec. 4.3 alpha/beta).

A matching of one feature space of K models with widths ``n_1..n_K`` assigns every feature of
every model to one of ``n_out`` clusters. Merging averages the members of each cluster
(``merged = sum_k M^k f^k``) and unmerging copies a cluster back to each member
(``f^k ~= U^k merged``). All matchers here require equal widths and produce ``n_out = n_1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from raymerge.zipit.stats import symmetrize_

MATCHERS = ("zipit", "permute", "identity")

_NEG_INF = float("-inf")


@dataclass(frozen=True, eq=False)
class Matching:
    """Cluster assignment of every feature of every model (compact merge/unmerge matrices).

    ``assign[k][i]`` is the cluster in ``[0, n_out)`` of feature ``i`` of model ``k``;
    ``sizes[c]`` is the number of members of cluster ``c`` over all models (always >= 1).
    ``eq=False``: tensors have no single truth value, so equality is identity.
    """

    assign: tuple[torch.Tensor, ...]
    sizes: torch.Tensor

    def __post_init__(self) -> None:
        assign = tuple(torch.as_tensor(a, dtype=torch.int64).reshape(-1) for a in self.assign)
        sizes = torch.as_tensor(self.sizes, dtype=torch.int64).reshape(-1)
        n_out = int(sizes.numel())
        if len(assign) == 0:
            raise ValueError("a Matching needs at least one model")
        for k, a in enumerate(assign):
            if a.numel() and (int(a.min()) < 0 or int(a.max()) >= n_out):
                raise ValueError(f"model {k} assigns a feature outside clusters [0, {n_out})")
        counts = torch.bincount(torch.cat(assign), minlength=n_out)
        if not torch.equal(counts, sizes):
            raise ValueError("Matching.sizes disagrees with the member counts of assign")
        if n_out and int(sizes.min()) < 1:
            raise ValueError("every cluster of a Matching must be non-empty")
        object.__setattr__(self, "assign", assign)
        object.__setattr__(self, "sizes", sizes)

    @property
    def n_out(self) -> int:
        """Number of merged features (clusters)."""
        return int(self.sizes.numel())

    @property
    def widths(self) -> tuple[int, ...]:
        """Number of features of each model."""
        return tuple(int(a.numel()) for a in self.assign)

    def merge_matrices(self, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per model k, ``M^k`` [n_out, n_k] with ``M^k[c, i] = 1/sizes[c]`` iff feature i is in c.

        ``sum_k M^k f^k`` is the average of each cluster's member features.
        """
        inv = 1.0 / self.sizes.to(torch.float64)
        mats = []
        for a in self.assign:
            m = torch.zeros(self.n_out, a.numel(), dtype=torch.float64)
            m[a, torch.arange(a.numel())] = inv[a]
            mats.append(m.to(dtype))
        return mats

    def unmerge_matrices(self, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per model k, ``U^k`` [n_k, n_out]: ``U^k[i, c] = 1`` iff feature i is in cluster c."""
        mats = []
        for a in self.assign:
            u = torch.zeros(a.numel(), self.n_out, dtype=dtype)
            u[torch.arange(a.numel()), a] = 1
            mats.append(u)
        return mats


def _equal_widths(sizes: Sequence[int], who: str, min_models: int) -> tuple[int, int]:
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < min_models:
        raise ValueError(f"{who} needs at least {min_models} models, got K={len(sizes)}")
    if len(set(sizes)) != 1 or sizes[0] < 1:
        raise ValueError(f"{who} needs equal positive feature widths per model, got sizes {sizes}")
    return len(sizes), sizes[0]


def _prepared_corr(
    corr: torch.Tensor,
    width: int,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A symmetric copy of ``corr`` in ``dtype`` on ``device``; checks shape [C, C] and
    finiteness. Cast, then symmetrised in place by blocks (no second [C, C] temporary)."""
    if corr.dim() != 2 or tuple(corr.shape) != (width, width):
        raise ValueError(f"expected a [{width}, {width}] correlation, got {tuple(corr.shape)}")
    c = corr.detach().to(device=device, dtype=dtype, copy=True)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("correlation matrix has non-finite entries")
    symmetrize_(c)
    return c


def _from_labels(label: torch.Tensor, active: torch.Tensor, k: int, n: int) -> Matching:
    """Matching from ``label[feature] = surviving slot``; clusters numbered by slot order."""
    label, active = label.cpu(), active.cpu()
    slots = torch.nonzero(active).flatten()
    cluster_of_slot = torch.full((k * n,), -1, dtype=torch.int64)
    cluster_of_slot[slots] = torch.arange(slots.numel())
    flat = cluster_of_slot[label]
    sizes = torch.bincount(flat, minlength=slots.numel())
    return Matching(assign=tuple(flat[i * n : (i + 1) * n].clone() for i in range(k)), sizes=sizes)


def _block_sharing(score: torch.Tensor, mem: torch.Tensor, models: torch.Tensor) -> None:
    """Set ``score`` to -inf for every pair of clusters that both contain one of ``models``
    (one model at a time: O(rows^2) index work, no [C, C] temporary)."""
    for m in torch.nonzero(models).flatten().tolist():
        rows = torch.nonzero(mem[:, m]).flatten()
        score[rows[:, None], rows[None, :]] = _NEG_INF


def match_zipit(
    corr: torch.Tensor,
    sizes: Sequence[int],
    *,
    alpha: float = 0.5,
    beta: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Matching:
    """ZipIt! greedy matching (Stoica et al., ICLR 2024, Sec. 4.1 and 4.3).

    ``corr`` is the [C, C] correlation of the concatenated features of K >= 2 models of equal
    width n (C = K n). Starting from C singleton clusters, the most similar pair of current
    clusters is merged, within a model or across models, until ``n_out = n`` clusters remain.
    Unlike permutation matching, a feature may thus be merged with features of its own model
    when that is what correlates best ("zipping" redundant features).

    Exact rules (as the official ``match_tensors_zipit``, with the noted generalisations):

    * Similarity of a pair is ``corr``, with the diagonal never eligible. The best pair is the
      highest allowed similarity; ties go to the lowest flat index (row-major, row < column).
    * Merging clusters a and b: the similarity of the new cluster to every other cluster x is
      ``min(s(a, x), s(b, x))`` (complete linkage), then multiplied by ``alpha`` when
      ``alpha > 0`` (damps repeated merges into one cluster; as in the official code this
      multiplies, so a negative similarity moves toward 0).
    * ``alpha <= 0``: no damping, but the new cluster may never again merge with a cluster that
      shares a model with it (official: blocks the origin models of both halves). For K = 2 a
      cross-model pair is then final.
    * A merge is *within model k* when both clusters contain a feature of model k (for
      singletons: two features of model k; the official code compares the models of the
      lowest-index members). Each such merge charges model k's budget of
      ``floor(beta * (C - n_out) / K)`` within-model merges. Once model k has spent its budget,
      every pair of clusters that both contain model k is forbidden from then on. A budget of 0
      (e.g. ``beta = 0``) forbids them from the start, so every merge joins clusters with
      disjoint models (the official code allows one within-model merge before its first check).
    * If every remaining pair is forbidden (possible for K >= 3 with small beta or alpha <= 0),
      the constraints are relaxed for that step and the most similar pair is merged anyway.

    Clusters are numbered by their lowest member's flat index. Cost: O(C^2) memory (two
    ``dtype`` matrices: 2 x 4 C^2 bytes in float32) and, per merge, O(C) plus a row rescan for
    clusters whose best partner changed. ``dtype``/``device``: the working matrices (float32 is
    enough for similarities in [-1, 1] that are only compared, min-ed and scaled by alpha: it
    can only flip pairs whose float64 scores differ by less than float32's rounding, ~6e-8;
    float32 on a GPU is the fast path). The same inputs, dtype and device give the same result.

    Long because the exact rules are stated here, next to the one loop that follows them.
    """
    k, n = _equal_widths(sizes, "ZipIt matching", min_models=2)
    width = k * n
    n_out = n
    steps = width - n_out
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    budget = math.floor(beta * steps / k + 1e-9)

    sims = _prepared_corr(corr, width, dtype, device)
    sims.fill_diagonal_(_NEG_INF)  # unconstrained similarities, for the relaxed fallback only
    score = sims.clone()  # the same with forbidden pairs at -inf
    dev = sims.device
    idx = torch.arange(width, device=dev)
    mem = torch.zeros(width, k, dtype=torch.bool, device=dev)
    mem[idx, idx // n] = True
    active = torch.ones(width, dtype=torch.bool, device=dev)
    label = idx.clone()
    used = torch.zeros(k, dtype=torch.int64, device=dev)
    exhausted = torch.full((k,), budget <= 0, dtype=torch.bool, device=dev)
    if bool(exhausted.any()):
        _block_sharing(score, mem, exhausted)
    rowmax = score.max(dim=1).values
    argcol = score.argmax(dim=1)  # first maximum: lowest column on ties

    for _ in range(steps):
        r = int(torch.argmax(rowmax))
        if rowmax[r] == _NEG_INF:  # everything forbidden: relax, take the best pair anyway
            r, c = divmod(int(torch.argmax(sims)), width)
        else:
            c = int(argcol[r])
        r, c = min(r, c), max(r, c)

        shared = mem[r] & mem[c]
        new_sims = torch.minimum(sims[r], sims[c])
        new_score = torch.minimum(score[r], score[c])  # -inf (forbidden) is inherited
        if alpha > 0:
            new_sims *= alpha
            new_score *= alpha
        mem[r] |= mem[c]
        mem[c] = False
        active[c] = False
        label[label == c] = r
        used += shared
        newly = ~exhausted & (used >= budget)
        exhausted |= newly
        if alpha <= 0:
            new_score[(mem & mem[r]).any(dim=1)] = _NEG_INF
        if bool((mem[r] & exhausted).any()):
            new_score[(mem & (mem[r] & exhausted)).any(dim=1)] = _NEG_INF
        for row in (new_sims, new_score):
            row[r] = _NEG_INF
            row[c] = _NEG_INF
        for mat, row in ((sims, new_sims), (score, new_score)):
            mat[r, :] = row
            mat[:, r] = row
            mat[c, :] = _NEG_INF
            mat[:, c] = _NEG_INF

        if bool(newly.any()):
            _block_sharing(score, mem, newly)
            rowmax = score.max(dim=1).values
            argcol = score.argmax(dim=1)
            continue
        # Incremental row maxima: only column r changed (and column c died) for other rows.
        stale = (argcol == r) | (argcol == c)
        stale[r] = True
        col = score[:, r]
        better = ~stale & ((col > rowmax) | ((col == rowmax) & (argcol > r)))
        rowmax = torch.where(better, col, rowmax)
        argcol = torch.where(better, torch.full_like(argcol, r), argcol)
        rows = torch.nonzero(stale).flatten()
        sub = score[rows]
        rowmax[rows] = sub.max(dim=1).values
        argcol[rows] = sub.argmax(dim=1)
        rowmax[c] = _NEG_INF

    return _from_labels(label, active, k, n)


def match_permute(corr: torch.Tensor, sizes: Sequence[int]) -> Matching:
    """Permutation matching (the Git Re-Basin style baseline of the ZipIt! paper).

    Each model k >= 1 is aligned to model 0 by a Hungarian assignment maximising the summed
    correlation of the cross block ``corr[model 0, model k]``
    (``scipy.optimize.linear_sum_assignment(..., maximize=True)``); cluster c is feature c of
    model 0 plus the feature of each other model assigned to it, so every cluster has exactly K
    members. K > 2 aligns every model to model 0 independently, as the official
    ``match_tensors_permute`` does. Deterministic (scipy's solver is).
    """
    try:
        from scipy.optimize import linear_sum_assignment  # only permute needs scipy
    except ImportError:
        raise ImportError(
            "the permute matcher needs scipy: pip install 'raymerge[zipit]'"
        ) from None

    k, n = _equal_widths(sizes, "permute matching", min_models=2)
    width = k * n
    if corr.dim() != 2 or tuple(corr.shape) != (width, width):
        raise ValueError(f"expected a [{width}, {width}] correlation, got {tuple(corr.shape)}")
    assign = [torch.arange(n)]
    for m in range(1, k):
        # the cross block of the symmetrised correlation (only n^2 entries are copied)
        cols = slice(m * n, (m + 1) * n)
        block = (corr[:n, cols].double() + corr[cols, :n].double().T).cpu() / 2
        if not bool(torch.isfinite(block).all()):
            raise ValueError("correlation matrix has non-finite entries")
        rows, picked = linear_sum_assignment(block.numpy(), maximize=True)
        a = np.empty(n, dtype=np.int64)
        a[picked] = rows
        assign.append(torch.from_numpy(a))
    return Matching(assign=tuple(assign), sizes=torch.full((n,), k, dtype=torch.int64))


def match_identity(sizes: Sequence[int]) -> Matching:
    """Identity matching: feature i of every model forms cluster i (plain weight averaging)."""
    k, n = _equal_widths(sizes, "identity matching", min_models=1)
    return Matching(
        assign=tuple(torch.arange(n) for _ in range(k)),
        sizes=torch.full((n,), k, dtype=torch.int64),
    )


def match(
    kind: str,
    corr: torch.Tensor,
    sizes: Sequence[int],
    *,
    alpha: float = 0.5,
    beta: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Matching:
    """Dispatch to ``match_zipit`` / ``match_permute`` / ``match_identity`` by ``kind``
    (``dtype``/``device``: zipit's working matrices; permute runs scipy in float64)."""
    if kind == "zipit":
        return match_zipit(corr, sizes, alpha=alpha, beta=beta, dtype=dtype, device=device)
    if kind == "permute":
        return match_permute(corr, sizes)
    if kind == "identity":
        return match_identity(sizes)
    raise ValueError(f"unknown matcher {kind!r}; valid: {', '.join(MATCHERS)}")


def group_similarity(corr: torch.Tensor, sizes: Sequence[int], group: int) -> torch.Tensor:
    """Unit-level similarity when units are ``group`` consecutive features (e.g. attention heads).

    Returns [C/group, C/group] float64 with ``S[u, v] = mean_e corr[u*group + e, v*group + e]``
    (dimension e of unit u against the same dimension of unit v) and ``S[u, u] = 1``. Matching
    on ``S`` with unit sizes ``sizes[k] // group`` moves whole heads (the tensors' axes expand a
    unit to its features: :class:`raymerge.zipit.spaces.Axis`).
    """
    sizes = tuple(int(s) for s in sizes)
    if group < 1 or any(s % group for s in sizes):
        raise ValueError(f"group {group} must be >= 1 and divide every size in {sizes}")
    width = sum(sizes)
    if corr.dim() != 2 or tuple(corr.shape) != (width, width):
        raise ValueError(f"expected a [{width}, {width}] correlation, got {tuple(corr.shape)}")
    units = width // group
    c = corr.detach().to(device="cpu", dtype=torch.float64).reshape(units, group, units, group)
    sim = c.diagonal(dim1=1, dim2=3).mean(dim=-1).contiguous()
    sim.fill_diagonal_(1.0)
    return sim
