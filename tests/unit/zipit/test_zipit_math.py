"""Pure-math tests for raymerge.zipit (statistics, correlation, ZipIt!/permute/identity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from raymerge.zipit.matching import (
    Matching,
    group_similarity,
    match,
    match_identity,
    match_permute,
    match_zipit,
)
from raymerge.zipit.stats import FeatureStats, features_of_models, tree_reduce

# ---------------------------------------------------------------- statistics


def _stats(x: torch.Tensor, sizes) -> FeatureStats:
    s = FeatureStats.empty(sizes)
    s.update(x)
    return s


def test_update_batches_equal_single_pass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 7, generator=g, dtype=torch.float32)
    one = _stats(x, (3, 4))
    many = FeatureStats.empty((3, 4))
    for chunk in x.split(13):
        many.update(chunk)
    assert many.count == one.count == 100
    assert many.sum.dtype == torch.float64 and many.outer.shape == (7, 7)
    assert_close(many.sum, one.sum, rtol=1e-12, atol=1e-12)
    assert_close(many.outer, one.outer, rtol=1e-12, atol=1e-12)


def test_tree_reduce_random_splits_equal_single_pass():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(211, 6, generator=g, dtype=torch.float64) * 3 + 1
    whole = _stats(x, (3, 3))
    for trial in range(5):
        cuts = sorted(torch.randint(0, 212, (4,), generator=g).tolist())
        bounds = [0, *cuts, 211]
        parts = [_stats(x[a:b], (3, 3)) for a, b in zip(bounds[:-1], bounds[1:])]
        red = tree_reduce(parts)
        assert red.count == 211, trial
        assert_close(red.sum, whole.sum, rtol=1e-12, atol=1e-10)
        assert_close(red.outer, whole.outer, rtol=1e-12, atol=1e-10)
        assert_close(red.correlation(), whole.correlation(), rtol=1e-10, atol=1e-12)
    # tree_reduce is deterministic and does not alias its inputs
    parts = [_stats(x[i::3], (3, 3)) for i in range(3)]
    a, b = tree_reduce(parts), tree_reduce(parts)
    assert torch.equal(a.outer, b.outer)
    assert tree_reduce(parts[:1]).outer is not parts[0].outer


def test_statistics_pickle_as_buffers_and_stay_usable():
    """FeatureStats pickle their tensors as numpy buffers (zero-copy through Ray's object
    store); what comes back, possibly read-only, adds and correlates as the original."""
    import pickle

    g = torch.Generator().manual_seed(9)
    s = _stats(torch.randn(40, 5, generator=g, dtype=torch.float64), (2, 3))
    buffers = []
    blob = pickle.dumps(s, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2 and len(blob) < 1000  # the data is out of band
    ro = [memoryview(bytes(b.raw())) for b in buffers]  # read-only, as the object store's
    back = pickle.loads(blob, buffers=ro)
    assert back.count == 40 and back.sizes == (2, 3)
    assert torch.equal(back.outer, s.outer) and torch.equal(back.sum, s.sum)
    assert torch.equal((back + s).outer, 2 * s.outer)
    assert torch.equal(back.correlation(), s.correlation())


def test_add_checks_sizes():
    with pytest.raises(ValueError, match="sizes"):
        FeatureStats.empty((2, 2)) + FeatureStats.empty((1, 3))
    with pytest.raises(ValueError):
        FeatureStats.empty((2, 2)).update(torch.zeros(3, 5))
    with pytest.raises(ValueError):
        tree_reduce([])


def test_correlation_matches_numpy_corrcoef():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(500, 3, generator=g, dtype=torch.float64)
    x = torch.cat([base, base @ torch.randn(3, 4, generator=g, dtype=torch.float64) + 5], 1)
    s = _stats(x, (3, 4))
    corr = s.correlation()
    assert corr.dtype == torch.float64
    assert_close(corr, torch.from_numpy(np.corrcoef(x.numpy(), rowvar=False)), rtol=0, atol=1e-10)
    assert_close(s.covariance(), torch.from_numpy(np.cov(x.numpy(), rowvar=False, bias=True)))
    assert torch.equal(corr.diagonal(), torch.ones(7, dtype=torch.float64))


def test_constant_features():
    g = torch.Generator().manual_seed(3)
    n = 64
    live = torch.randn(n, 2, generator=g, dtype=torch.float64)
    cols = [
        live[:, 0],
        torch.zeros(n, dtype=torch.float64),  # 1: dead
        torch.full((n,), 0.3, dtype=torch.float64),  # 2: constant 0.3
        live[:, 1],
        torch.zeros(n, dtype=torch.float64),  # 4: dead
        torch.full((n,), 0.3, dtype=torch.float64),  # 5: constant 0.3
        torch.full((n,), 7.0, dtype=torch.float64),  # 6: constant 7
    ]
    x = torch.stack(cols, dim=1).float()  # float32 input, as activations would be
    corr = _stats(x, (4, 3)).correlation()
    assert corr[1, 4] == 1.0 and corr[4, 1] == 1.0  # dead units match each other
    assert corr[2, 5] == 1.0  # same nonzero constant
    for dead in (1, 4, 2, 5, 6):
        assert corr[dead, 0] == 0.0 and corr[dead, 3] == 0.0  # never with live units
    assert corr[1, 2] == 0.0 and corr[2, 6] == 0.0 and corr[1, 6] == 0.0  # different values
    assert torch.equal(corr.diagonal(), torch.ones(7, dtype=torch.float64))
    assert torch.equal(corr, corr.T)
    assert float(corr.abs().max()) <= 1.0


def test_features_of_models():
    a, b = torch.ones(4, 2), torch.zeros(4, 3)
    f = features_of_models([a, b])
    assert f.shape == (4, 5) and torch.equal(f[:, :2], a)
    with pytest.raises(ValueError):
        features_of_models([a, torch.zeros(3, 3)])


# ---------------------------------------------------------------- matchers


def _pairs_corr() -> torch.Tensor:
    """K=2, n=3: A0-B2, A1-B0, A2-B1 strongly correlated; everything else weak."""
    c = torch.full((6, 6), 0.1, dtype=torch.float64)
    c.fill_diagonal_(1.0)
    for a, b in ((0, 2), (1, 0), (2, 1)):
        c[a, 3 + b] = c[3 + b, a] = 0.9
    return c


def _check_valid(m: Matching, sizes) -> None:
    assert m.widths == tuple(sizes)
    assert m.n_out == sizes[0]
    assert int(m.sizes.min()) >= 1
    assert int(m.sizes.sum()) == sum(sizes)
    for a in m.assign:
        assert a.dtype == torch.int64


def test_zipit_and_permute_recover_obvious_pairing():
    c = _pairs_corr()
    for m in (match_zipit(c, (3, 3)), match_permute(c, (3, 3)), match("zipit", c, (3, 3))):
        _check_valid(m, (3, 3))
        assert m.assign[0].tolist() == [0, 1, 2]
        assert m.assign[1].tolist() == [1, 2, 0]  # B0 with A1, B1 with A2, B2 with A0
        assert m.sizes.tolist() == [2, 2, 2]


def test_identity():
    m = match_identity((4, 4, 4))
    _check_valid(m, (4, 4, 4))
    assert all(a.tolist() == [0, 1, 2, 3] for a in m.assign)
    assert m.sizes.tolist() == [3, 3, 3, 3]
    assert match("identity", torch.eye(8), (4, 4)).assign[1].tolist() == [0, 1, 2, 3]


def test_dispatch_and_errors():
    with pytest.raises(ValueError, match="zipit, permute, identity"):
        match("nope", torch.eye(4), (2, 2))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        match_zipit(torch.eye(5), (2, 3))
    with pytest.raises(ValueError, match="K=1"):
        match_permute(torch.eye(3), (3,))
    with pytest.raises(ValueError):
        match_zipit(torch.eye(4), (2, 2), beta=-1)
    with pytest.raises(ValueError):
        Matching(assign=(torch.tensor([0, 0]),), sizes=torch.tensor([2, 0]))


def _within_corr() -> torch.Tensor:
    """A0-A1 is the most correlated pair; cross pairs A0-B0, A1-B1, A2-B2 slightly less."""
    c = torch.full((6, 6), 0.0, dtype=torch.float64)
    c.fill_diagonal_(1.0)
    c[0, 1] = c[1, 0] = 0.95
    for i in range(3):
        c[i, 3 + i] = c[3 + i, i] = 0.8
    c[0, 4] = c[4, 0] = 0.7
    return c


def test_beta_zero_forbids_within_model_merges():
    c = _within_corr()
    m = match_zipit(c, (3, 3), alpha=0.5, beta=0.0)
    _check_valid(m, (3, 3))
    for cl in range(m.n_out):
        assert [int((a == cl).sum()) for a in m.assign] == [1, 1]
    assert m.assign[1].tolist() == [0, 1, 2]


def test_beta_one_merges_within_model():
    c = _within_corr()
    m = match_zipit(c, (3, 3), alpha=0.5, beta=1.0)
    _check_valid(m, (3, 3))
    assert m.assign[0][0] == m.assign[0][1]  # A0 and A1 zipped together
    # budget floor(1 * 3 / 2) = 1 per model. Merges: A0+A1 (0.95, A's budget spent), A2+B2
    # (0.8), then {A0,A1}+B1 (min(0.7, 0.8) * 0.5 = 0.35 beats every 0.0); B0 stays alone.
    assert m.assign[0].tolist() == [0, 0, 1]
    assert m.assign[1].tolist() == [2, 0, 1]
    assert m.sizes.tolist() == [3, 2, 1]


def test_alpha_damps_repeated_merges():
    # A0 correlates 0.9 with B0 and 0.8 with B1; B1 correlates weakly (0.5) with A1.
    c = torch.zeros(4, 4, dtype=torch.float64)
    c.fill_diagonal_(1.0)
    for i, j, v in ((0, 2, 0.9), (0, 3, 0.8), (2, 3, 0.85), (1, 3, 0.5)):
        c[i, j] = c[j, i] = v
    # alpha=1: {A0,B0} vs B1 = min(0.8, 0.85) = 0.8 > 0.5 -> B1 joins A0's cluster
    m1 = match_zipit(c, (2, 2), alpha=1.0, beta=1.0)
    assert m1.assign[1].tolist() == [0, 0] and m1.assign[0].tolist() == [0, 1]
    # alpha=0.5: 0.8 * 0.5 = 0.4 < 0.5 -> B1 goes with A1 instead
    m2 = match_zipit(c, (2, 2), alpha=0.5, beta=1.0)
    assert m2.assign[1].tolist() == [0, 1] and m2.assign[0].tolist() == [0, 1]
    # alpha=0: a merged cross pair never takes another member of its models
    m0 = match_zipit(c, (2, 2), alpha=0.0, beta=1.0)
    assert m0.assign[1].tolist() == [0, 1]


def test_three_models():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    perms = [torch.randperm(5, generator=g) for _ in range(2)]
    noise = [0.05 * torch.randn(200, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    feats = [x, (x + noise[0])[:, perms[0]], (x + noise[1])[:, perms[1]]]
    corr = _stats(features_of_models(feats), (5, 5, 5)).correlation()
    for kind in ("zipit", "permute"):
        m = match(kind, corr, (5, 5, 5), alpha=0.5, beta=1.0)
        _check_valid(m, (5, 5, 5))
        for k in (1, 2):
            # feature j of model k is (a noisy copy of) feature perms[k-1][j] of model 0
            assert m.assign[k].tolist() == m.assign[0][perms[k - 1]].tolist(), (kind, k)
    m = match_zipit(corr, (5, 5, 5), beta=0.0)
    _check_valid(m, (5, 5, 5))


def test_merge_unmerge_matrices():
    g = torch.Generator().manual_seed(5)
    c = torch.rand(12, 12, generator=g, dtype=torch.float64) * 2 - 1
    c = (c + c.T) / 2
    m = match_zipit(c, (4, 4, 4), alpha=0.7, beta=1.0)
    _check_valid(m, (4, 4, 4))
    merge, unmerge = m.merge_matrices(torch.float64), m.unmerge_matrices(torch.float64)
    assert [t.shape for t in merge] == [(4, 4)] * 3
    assert [t.shape for t in unmerge] == [(4, 4)] * 3
    # cluster averaging: sum_k M^k U^k = I (each cluster's members average back to it)
    assert_close(sum(mk @ uk for mk, uk in zip(merge, unmerge)), torch.eye(4, dtype=torch.float64))
    # features that are already the unmerged copy of f merge back to f exactly
    f = torch.randn(4, 9, generator=g, dtype=torch.float64)
    assert_close(sum(mk @ (uk @ f) for mk, uk in zip(merge, unmerge)), f)
    # columns of M^k sum to 1 over all models per cluster; U^k rows are one-hot
    assert_close(sum(mk.sum(1) for mk in merge), torch.ones(4, dtype=torch.float64))
    assert all(torch.equal(uk.sum(1), torch.ones(4, dtype=torch.float64)) for uk in unmerge)
    assert merge[0].dtype == torch.float64 and m.merge_matrices()[0].dtype == torch.float32


def _reference_zipit(corr: torch.Tensor, sizes, alpha: float, beta: float) -> list[list[int]]:
    """Slow literal implementation of the documented rules (full rescans, explicit sets)."""
    k, n = len(sizes), sizes[0]
    width = k * n
    sims = ((corr + corr.T) / 2).double().clone()
    sims.fill_diagonal_(-math.inf)
    blocked = torch.zeros(width, width, dtype=torch.bool)
    members = {i: {i} for i in range(width)}
    models = {i: {i // n} for i in range(width)}
    budget = math.floor(beta * (width - n) / k + 1e-9)
    used = [0] * k
    dead = {m for m in range(k) if budget <= 0}

    def kill():
        for a in members:
            for b in members:
                if models[a] & models[b] & dead:
                    blocked[a, b] = True

    kill()
    for _ in range(width - n):
        score = sims.masked_fill(blocked, -math.inf)
        if score.max() == -math.inf:
            score = sims
        r, c = divmod(int(torch.argmax(score)), width)
        r, c = min(r, c), max(r, c)
        shared = models[r] & models[c]
        row = torch.minimum(sims[r], sims[c]) * (alpha if alpha > 0 else 1.0)
        brow = blocked[r] | blocked[c]
        members[r] |= members.pop(c)
        models[r] |= models.pop(c)
        for j in members:
            if j != r and alpha <= 0 and models[j] & models[r]:
                brow[j] = True
        row[r] = row[c] = -math.inf
        sims[r, :] = row
        sims[:, r] = row
        sims[c, :] = -math.inf
        sims[:, c] = -math.inf
        blocked[r, :] = brow
        blocked[:, r] = brow
        for m in shared:
            used[m] += 1
            if used[m] >= budget:
                dead.add(m)
        kill()
    slots = sorted(members)
    out = [[0] * n for _ in range(k)]
    for cl, s in enumerate(slots):
        for f in members[s]:
            out[f // n][f % n] = cl
    return out


@pytest.mark.parametrize("k,n", [(2, 6), (3, 4), (4, 3)])
@pytest.mark.parametrize("alpha,beta", [(0.5, 1.0), (1.0, 0.0), (0.3, 0.5), (0.0, 1.0), (0.0, 0.0)])
def test_zipit_matches_slow_reference(k, n, alpha, beta):
    g = torch.Generator().manual_seed(100 * k + n)
    for _ in range(4):
        c = torch.rand(k * n, k * n, generator=g, dtype=torch.float64) * 2 - 1
        c = torch.round(c * 4) / 4  # many exact ties exercise the tie-breaking
        c = (c + c.T) / 2
        m = match_zipit(c, (n,) * k, alpha=alpha, beta=beta)
        _check_valid(m, (n,) * k)
        assert [a.tolist() for a in m.assign] == _reference_zipit(c, (n,) * k, alpha, beta)


def test_permuted_copy_with_dead_units():
    g = torch.Generator().manual_seed(6)
    n_rows, n = 300, 10
    f = torch.relu(torch.randn(n_rows, n, generator=g, dtype=torch.float64) + 0.5)
    f[:, 3] = 0.0
    f[:, 7] = 0.0
    perm = torch.randperm(n, generator=g)
    b = torch.empty_like(f)
    b[:, perm] = f  # B feature perm[i] is A feature i
    corr = _stats(features_of_models([f.float(), b.float()]), (n, n)).correlation()
    dead_a, dead_b = {3, 7}, {int(perm[3]), int(perm[7])}
    for m in (match_zipit(corr, (n, n), alpha=0.5, beta=1.0), match_permute(corr, (n, n))):
        _check_valid(m, (n, n))
        a0, a1 = m.assign
        for i in range(n):
            if i not in dead_a:
                assert a1[perm[i]] == a0[i]
        dead_clusters = {int(a0[i]) for i in dead_a} | {int(a1[j]) for j in dead_b}
        for i in range(n):
            if i not in dead_a:
                assert int(a0[i]) not in dead_clusters
        for j in range(n):
            if j not in dead_b:
                assert int(a1[j]) not in dead_clusters


# ---------------------------------------------------------------- grouped units (heads)


def test_group_similarity():
    g = torch.Generator().manual_seed(7)
    c = torch.rand(8, 8, generator=g, dtype=torch.float64)
    c = (c + c.T) / 2
    s = group_similarity(c, (4, 4), 2)
    assert s.shape == (4, 4) and s.dtype == torch.float64
    assert_close(s[0, 3], (c[0, 6] + c[1, 7]) / 2)
    assert_close(s[2, 1], (c[4, 2] + c[5, 3]) / 2)
    assert torch.equal(s.diagonal(), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError):
        group_similarity(c, (4, 4), 3)


def test_head_matching_end_to_end():
    """Heads of B are A's heads permuted; matching on unit similarity moves whole heads."""
    g = torch.Generator().manual_seed(8)
    heads, hd = 3, 4
    a = torch.randn(400, heads * hd, generator=g, dtype=torch.float64)
    hperm = [2, 0, 1]  # B head j is A head hperm[j]
    b = torch.cat([a[:, h * hd : (h + 1) * hd] for h in hperm], dim=1)
    corr = _stats(features_of_models([a, b]), (12, 12)).correlation()
    unit = match_zipit(group_similarity(corr, (12, 12), hd), (heads, heads))
    _check_valid(unit, (heads, heads))
    for j, h in enumerate(hperm):
        assert unit.assign[1][j] == unit.assign[0][h]
