"""TSV-M, Iso-C and Iso-CTS: exact values on task matrices whose SVDs are known by hand, the
fallbacks for tensors that are not matrices, and the subspace sizing FusionBench uses."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from raymerge.methods import merge_whole
from raymerge.methods.svd import cts_sizes, iso_c_delta, iso_cts_delta, tsv_delta
from tests.unit.methods.test_methods import defaults


def diag(*v):
    return torch.diag(torch.tensor(v, dtype=torch.float32))


def merge(name, base, xs, per=None, **wide):
    params, model_params = defaults(name, len(xs), **wide)
    if per:
        model_params = per
    return merge_whole(name, base, xs, model_params, params)


def close(got, want, atol=1e-6):
    assert_close(got, torch.as_tensor(want, dtype=got.dtype), rtol=0, atol=atol)


def test_tsv_m_of_orthogonal_tasks_is_their_sum():
    """Tasks 2 e1 e2' and 3 e3 e1' (3 x 3, N = 2): each keeps int(3 / 2) = 1 triplet, the
    concatenated singular vectors are already orthonormal, so TSV-M = task arithmetic."""
    d1 = torch.zeros(3, 3)
    d1[0, 1] = 2.0
    d2 = torch.zeros(3, 3)
    d2[2, 0] = 3.0
    close(tsv_delta([d1, d2]), d1 + d2)
    base = torch.ones(3, 3)
    close(merge("tsv_m", base, [base + d1, base + d2], **{"lambda": 0.5}), base + 0.5 * (d1 + d2))


def test_tsv_m_keeps_only_each_tasks_top_share():
    """diag(4, 1) and diag(0, 0) + 2 e2 e2' (2 x 2, N = 2, k = 1): task 1 keeps only its top
    direction e1 (s = 4), task 2 its e2 (s = 2): diag(4, 2)."""
    close(tsv_delta([diag(4.0, 1.0), diag(0.0, 2.0)]), diag(4.0, 2.0))
    # three tasks on a rank-2 matrix: k = int(2 / 3) = 0, nothing is kept
    close(tsv_delta([diag(4.0, 1.0)] * 3), torch.zeros(2, 2))


def test_tsv_m_weights_scale_task_vectors_before_the_svd():
    base = torch.zeros(2, 2)
    xs = [diag(4.0, 1.0), diag(0.0, 2.0)]
    got = merge("tsv_m", base, xs, per=[{"weight": 0.5}, {"weight": 3.0}])
    close(got, diag(2.0, 6.0))


def test_iso_c_flattens_the_spectrum_of_the_sum():
    """Sum diag(2, 4): singular values (4, 2) -> their mean 3 on the same singular vectors."""
    close(iso_c_delta(diag(2.0, 4.0)), diag(3.0, 3.0))
    base = torch.ones(2, 2)
    got = merge("iso_c", base, [base + diag(2.0, 0.0), base + diag(0.0, 4.0)])
    close(got, base + diag(3.0, 3.0))


def test_iso_cts_common_and_task_subspaces():
    """4 x 4, N = 2, fraction 0.5: common size 2 (e1: 4, e3: 2 of the sum diag(4, 1, 2, 1)),
    then 1 per task of what the common space leaves (e2: 1, e4: 1); mean of (1, 1, 4, 2) = 2."""
    d1, d2 = diag(4.0, 1.0, 0.0, 0.0), diag(0.0, 0.0, 2.0, 1.0)
    close(iso_cts_delta([d1, d2], 0.5), 2 * torch.eye(4))
    assert cts_sizes(4, 2, 0.5) == (2, 1)


def test_iso_cts_with_everything_common_is_iso_c():
    g = torch.Generator().manual_seed(0)
    ds = [torch.randn(6, 4, generator=g) for _ in range(3)]
    assert_close(iso_cts_delta(ds, 1.0), iso_c_delta(sum(ds)), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("r", "n", "fraction", "sizes"),
    [
        (768, 8, 0.8, (616, 19)),  # int(614.4) = 614, round(154 / 8) = 19 -> 768 - 152
        (4, 2, 0.25, (0, 2)),  # round(1.5) = 2 (half to even)
        (10, 4, 0.0, (2, 2)),  # round(2.5) = 2
        (3, 2, 0.0, (1, 1)),  # FusionBench: round(1.5) * 2 = 4 > 3, a common size of -1
    ],
)
def test_iso_cts_subspace_sizes(r, n, fraction, sizes):
    assert cts_sizes(r, n, fraction) == sizes


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts"])
@pytest.mark.parametrize("shape", [(5,), (), (2, 3, 4), (0, 3)])
def test_tensors_that_are_not_matrices_get_the_mean_task_vector(name, shape):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(shape, generator=g)
    xs = [base + torch.randn(shape, generator=g) for _ in range(3)]
    got = merge(name, base, xs, **{"lambda": 2.0})
    want = base + 2.0 * sum(x - base for x in xs) / 3
    close(got, want, 1e-5)


def _orthonormal_factor(a):
    """FusionBench's step, written out: U V' of the SVD of the concatenated singular vectors."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def test_tsv_m_and_iso_cts_orthogonalise_overlapping_task_subspaces():
    """Random tasks sharing directions (their concatenated singular vectors are far from
    orthonormal), against a literal transcription of FusionBench's TSV-M and Iso-CTS: the
    decorrelation step must act (without it both results differ by O(1))."""
    g = torch.Generator().manual_seed(5)
    shared = torch.randn(6, 2, generator=g, dtype=torch.float64)
    deltas = [
        shared @ torch.randn(2, 5, generator=g, dtype=torch.float64)
        + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
        for _ in range(3)
    ]
    # TSV-M: each task's top int(5 / 3) = 1 triplet, vectors decorrelated, singular values kept
    svds = [torch.linalg.svd(d, full_matrices=False) for d in deltas]
    u = torch.cat([s[0][:, :1] for s in svds], dim=1)
    sv = torch.cat([s[1][:1] for s in svds])
    vh = torch.cat([s[2][:1, :] for s in svds], dim=0)
    u_pad = torch.cat([u, torch.zeros(6, 2, dtype=torch.float64)], dim=1)
    vh_pad = torch.cat([vh, torch.zeros(2, 5, dtype=torch.float64)], dim=0)
    want = _orthonormal_factor(u_pad) @ torch.diag(torch.cat([sv, sv.new_zeros(2)]))
    want = want @ _orthonormal_factor(vh_pad)
    assert (u.T @ u - torch.eye(3, dtype=torch.float64)).abs().max() > 0.1  # really overlapping
    close(tsv_delta(deltas), want, 1e-10)
    # Iso-CTS: the merged matrix is isotropic: every non-zero singular value is the same
    got = iso_cts_delta(deltas, 0.4)
    s = torch.linalg.svdvals(got)
    s = s[s > 1e-9]
    assert len(s) == 5 and (s.max() - s.min()) / s.max() < 1e-9
