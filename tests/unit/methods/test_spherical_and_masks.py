"""Exact values of the mergekit 0.1.5 methods added here, on tensors small enough to work out by
hand: nuslerp, multislerp, karcher (spherical), sce, arcee_fusion, nearswap, ram, ramplus_tl."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from raymerge.methods import merge_whole
from raymerge.methods.karcher import coefficients as karcher_coefficients
from tests.unit.methods.test_methods import defaults

R2 = math.sqrt(0.5)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(got, want, atol=1e-7):
    assert_close(got, torch.as_tensor(want, dtype=got.dtype), rtol=0, atol=atol)


# --------------------------------------------------------------------------- nuslerp


def nuslerp(base, a, b, w=(1.0, 1.0), **wide):
    params, _ = defaults("nuslerp", 2, **wide)
    return merge_whole("nuslerp", base, [a, b], [{"weight": w[0]}, {"weight": w[1]}], params)


def test_nuslerp_orthogonal_vectors_meet_on_the_arc():
    close(nuslerp(None, t(1.0, 0.0), t(0.0, 1.0)), [R2, R2])  # t = 0.5, theta = pi/2
    close(nuslerp(t(1.0, 1.0), t(2.0, 1.0), t(1.0, 2.0)), [1 + R2, 1 + R2])  # task vectors


def test_nuslerp_weights_give_t_and_zero_sum_gives_half():
    # t = w_B / (w_A + w_B) = 0.25: sin(0.75 pi/2) A + sin(0.25 pi/2) B
    close(nuslerp(None, t(1.0, 0.0), t(0.0, 1.0), (3.0, 1.0)), [0.9238795, 0.3826834])
    close(nuslerp(None, t(1.0, 0.0), t(0.0, 1.0), (1.0, -1.0)), [R2, R2])  # |sum| < 1e-6


def test_nuslerp_colinear_lerps_and_a_zero_vector_is_orthogonal():
    close(nuslerp(None, t(1.0, 2.0), t(2.0, 4.0), (3.0, 1.0)), [1.25, 2.5])
    # A equals the base: v0 = 0, so c = 0, theta = pi/2: sin(pi/4) v1 (not t v1), as mergekit
    close(nuslerp(t(1.0, 1.0), t(1.0, 1.0), t(3.0, 1.0)), [1 + 2 * R2, 1.0])


def test_nuslerp_rows_and_columns():
    a = t([1.0, 0.0], [1.0, 1.0])
    b = t([0.0, 1.0], [2.0, 2.0])
    close(nuslerp(None, a, b, nuslerp_flatten=False), [[R2, R2], [1.5, 1.5]])
    a = t([1.0, 1.0], [0.0, 2.0])
    b = t([0.0, 2.0], [1.0, 4.0])
    got = nuslerp(None, a, b, nuslerp_flatten=False, nuslerp_row_wise=True)
    close(got, [[R2, 1.5], [R2, 3.0]])
    # row_wise alone does nothing while flatten is on: the whole tensor is one vector
    whole = nuslerp(None, a, b)
    assert torch.equal(whole, nuslerp(None, a, b, nuslerp_row_wise=True))


# --------------------------------------------------------------------------- multislerp


def multislerp(base, xs, w, **wide):
    params, _ = defaults("multislerp", len(xs), **wide)
    return merge_whole("multislerp", base, xs, [{"weight": x} for x in w], params)


def test_multislerp_mean_direction_at_the_weighted_mean_norm():
    close(multislerp(None, [t(1.0, 0.0), t(0.0, 1.0)], [1.0, 1.0]), [R2, R2])
    # norms 3 and 1, weights normalised to 1/2: direction (1, 1)/sqrt2, length 2
    close(multislerp(None, [t(3.0, 0.0), t(0.0, 1.0)], [1.0, 1.0]), [2 * R2, 2 * R2], 1e-6)
    # unnormalised weights 1, 1: the length is 1 * 3 + 1 * 1
    got = multislerp(None, [t(3.0, 0.0), t(0.0, 1.0)], [1.0, 1.0], normalize_weights=False)
    close(got, [4 * R2, 4 * R2], 1e-6)
    # with a base: of the task vectors
    got = multislerp(t(1.0, 1.0), [t(2.0, 1.0), t(1.0, 2.0)], [1.0, 1.0])
    close(got, [1 + R2, 1 + R2])


def test_multislerp_one_model_fallback_and_zero_sum():
    x = t(5.0, -1.0)
    assert torch.equal(multislerp(t(1.0, 1.0), [x], [0.3]), x)
    # antipodal pair with equal weights: mergekit's linear fallback, here 0.5 a + 0.5 (-a) = 0
    close(multislerp(t(1.0, 1.0), [t(2.0, 1.0), t(0.0, 1.0)], [1.0, 1.0]), [1.0, 1.0])
    with pytest.raises(ValueError, match="weighted sum of the unit vectors"):
        multislerp(None, [t(1.0, 0.0), t(-1.0, 0.0), t(0.0, 0.0)], [1.0, 1.0, 1.0])
    # no model changed the tensor: the base (mergekit raises for 3+ models)
    base = t(1.0, 2.0)
    close(multislerp(base, [base.clone()] * 3, [1.0, 2.0, 3.0]), [1.0, 2.0])
    # eps = 0 and one model left the tensor unchanged: its zero task vector adds nothing
    got = multislerp(base, [base.clone(), base + t(0.0, 4.0)], [1.0, 1.0], eps=0.0)
    close(got, [1.0, 2.0 + 2.0], 1e-6)  # direction of the other, at the mean norm 0.5 * 4


# --------------------------------------------------------------------------- karcher


def karcher(xs, **wide):
    params, _ = defaults("karcher", len(xs), **wide)
    return merge_whole("karcher", None, xs, [{} for _ in xs], params)


def test_karcher_two_points_meet_halfway_at_the_mean_norm():
    close(karcher([t(1.0, 0.0), t(0.0, 1.0)]), [R2, R2])
    close(karcher([t(2.0, 0.0), t(0.0, 4.0)]), [3 * R2, 3 * R2], 1e-6)


def test_karcher_iterates_to_the_arc_mean():
    """Angles 0, 0, pi/2: the Euclidean start is atan(1/2); on a circle one Riemannian step
    lands on the mean angle pi/6, the next finds |T| = 0."""
    xs = [t(1.0, 0.0), t(1.0, 0.0), t(0.0, 1.0)]
    close(karcher(xs), [math.sqrt(3) / 2, 0.5], 1e-6)
    close(karcher(xs, max_iter=0), [2 / math.sqrt(5), 1 / math.sqrt(5)], 1e-6)


def test_karcher_zero_inputs_and_single_input():
    # a zero tensor has no direction (norm <= tol) but counts in the mean norm: 2/3
    close(karcher([t(0.0, 0.0), t(1.0, 0.0), t(0.0, 1.0)]), [2 / 3 * R2, 2 / 3 * R2], 1e-6)
    close(karcher([t(0.0, 0.0), t(0.0, 0.0)]), [0.0, 0.0])
    x = t(3.0, 4.0)
    assert torch.equal(karcher([x]), x)


def test_karcher_coefficients_from_the_gram_matrix():
    """sum_j c_j x_j: x = (1, 0), (0, 1) meet at (1, 1)/sqrt2, scaled by the mean norm 1."""
    c = karcher_coefficients([[1.0, 0.0], [0.0, 1.0]], 10, 1e-5)
    assert c == pytest.approx([R2, R2], abs=1e-15)
    assert karcher_coefficients([[0.0, 0.0], [0.0, 0.0]], 10, 1e-5) is None


# --------------------------------------------------------------------------- sce


def sce(base, xs, **wide):
    params, _ = defaults("sce", len(xs), **wide)
    return merge_whole("sce", base, xs, [{} for _ in xs], params)


def test_sce_sign_consensus_with_mean_square_weights():
    """w = mean squares (3.5, 1.5) / 5; the elected sign of sum (2, 0, 2, 0) is + everywhere;
    each element: agreeing weighted deltas / agreeing weights (nothing agrees: 0 / 1e-6)."""
    z = torch.zeros(4)
    a, b = t(1.0, -2.0, 3.0, 0.0), t(1.0, 2.0, -1.0, 0.0)
    close(sce(z, [a, b]), [1.0, 2.0, 3.0, 0.0], 1e-6)


def test_sce_selects_by_variance():
    """Variances (0, 4, 2.25, 0): 2 nonzero, select_topk 0.5 keeps k = 1 element (index 1)."""
    z = torch.zeros(4)
    a, b = t(1.0, -2.0, 3.0, 0.0), t(1.0, 2.0, 0.0, 0.0)
    close(sce(z, [a, b], select_topk=0.5), [0.0, 2.0, 0.0, 0.0])
    close(sce(z, [a, b], select_topk=0.0), [0.0, 0.0, 0.0, 0.0])
    close(sce(z + 1, [a + 1], select_topk=0.5), [1.0] * 4)  # one model: no variance, the base


def test_sce_keeps_every_element_tied_at_the_cutoff():
    """Variances (0, 4, 4, 0), k = 1: mergekit's topk keeps one of the two; raymerge both."""
    z = torch.zeros(4)
    a, b = t(1.0, -2.0, 3.0, 0.0), t(1.0, 2.0, -1.0, 0.0)
    close(sce(z, [a, b], select_topk=0.5), [0.0, 2.0, 3.0, 0.0], 1e-6)


def test_sce_tiny_deltas_get_uniform_weights():
    z = torch.zeros(2)
    a, b = t(1e-4, 1e-4), t(3e-4, -1e-4)  # sum of mean squares < 1e-6: w = 1/2 each
    close(sce(z, [a, b]), [2e-4, 1e-4], 1e-10)


# --------------------------------------------------------------------------- arcee_fusion


def fusion(base, other):
    return merge_whole("arcee_fusion", base, [other], [{}], {})


def test_arcee_fusion_keeps_outliers_of_importance():
    """A vector has one KL, so importance ranks as |delta|: quartile ranks int(q * 4) = 1, 2, 3
    give 0.2, 0.3, 0.4; the threshold 0.3 + 1.5 * 0.2 = 0.6 keeps only the 10."""
    base = torch.zeros(5)
    other = t(0.1, 0.2, 0.3, 0.4, 10.0)
    close(fusion(base, other), [0.0, 0.0, 0.0, 0.0, 10.0])


def test_arcee_fusion_rows_have_their_own_kl_and_ties_are_kept():
    # equal importances: threshold = median, everything (>=) is kept
    base = torch.zeros(2, 3)
    close(fusion(base, base + 0.5), [[0.5] * 3] * 2)
    # row 0 changes a lot but uniformly (softmax unchanged: KL = 0, importance 0); rows 1-3
    # have KL 0.120, 0.120, 0.329: importances sorted (0 x5, .12, .12, .657), quartile ranks
    # int(q * 7) = 1, 3, 5, threshold 0 + 1.5 * 0.12 = 0.18: only row 3's change survives
    base = torch.zeros(4, 2)
    other = t([5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0])
    close(fusion(base, other), [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]], 0)


# --------------------------------------------------------------------------- nearswap, ram


def test_nearswap_exact():
    params, _ = defaults("nearswap", 1, t=0.25)
    base = torch.zeros(4)
    other = t(0.0625, 0.5, -2.0, 0.0)  # w = 1 (clamped), 0.5, 0.125, 1 (|d| floored at 1e-6)
    close(merge_whole("nearswap", base, [other], [{}], params), [0.0625, 0.25, -0.25, 0.0], 0)
    params, _ = defaults("nearswap", 1, t=-1.0)  # t <= 0: the base
    assert torch.equal(merge_whole("nearswap", base, [other], [{}], params), base)


def test_ram_exact():
    """Touched by both: the mean (2); by one: its delta (1, 2); |delta| <= epsilon: dropped."""
    base = torch.zeros(4)
    a, b = t(1.0, 0.0, 2.0, 1e-6), t(3.0, 1.0, 0.0, 0.0)
    params, _ = defaults("ram", 2)
    close(merge_whole("ram", base, [a, b], [{}, {}], params), [2.0, 1.0, 2.0, 0.0], 0)
    assert torch.equal(merge_whole("ram", base + 1, [], [], params), base + 1)


def test_ramplus_tl_scales_each_models_unique_part():
    """A shares 1, owns 1: rho 1 -> lambda 1 + 0.5 * 1; B shares 1, owns 2: rho 0.5 -> 1.25."""
    base = torch.zeros(4)
    a, b = t(1.0, 0.0, 2.0, 0.0), t(3.0, 1.0, 0.0, 4.0)
    params, _ = defaults("ramplus_tl", 2, r=0.5, alpha=1.0)
    got = merge_whole("ramplus_tl", base, [a, b], [{}, {}], params)
    close(got, [2.0, 1.25, 3.0, 5.0], 0)
    # the ratio is capped at alpha (default 0.2: lambda 1 + 0.1 * 0.2, in float32)
    params, _ = defaults("ramplus_tl", 2)
    got = merge_whole("ramplus_tl", base, [a, b], [{}, {}], params)
    lam = float(torch.tensor(1.0) + torch.tensor(0.1) * torch.tensor(0.2))
    close(got, [2.0, 1.0 * lam, 2.0 * lam, 4.0 * lam], 0)
