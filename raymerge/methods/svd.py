"""Merging in the singular vectors of task matrices: TSV-M, Iso-C and Iso-CTS (not in mergekit).

- **TSV-M**, Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model
  Merging", CVPR 2025, https://arxiv.org/abs/2412.00081: each task matrix keeps its top
  k = int(r * (1/N)) singular triplets (r = min(m, n), N tasks); the kept left and right
  singular vectors of all tasks are concatenated and each set is replaced by its nearest
  orthogonal matrix (the polar factor U V' of its SVD) to remove interference; the merged
  delta is U_perp diag(s) V_perp with the tasks' own singular values s.
- **Iso-C**, Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
  Task-Specific Subspaces", ICML 2025, https://arxiv.org/abs/2502.04959: the task-arithmetic
  sum of the task matrices with its spectrum flattened: mean(s) U V'.
- **Iso-CTS** (same paper): the top ``common_space_fraction`` of the summed matrix's singular
  vectors (the common subspace), plus, per task, the top singular vectors of its matrix with the
  common subspace projected out, equally many per task; both sets orthogonalised as in TSV-M
  and given one isotropic singular value, the mean of all the kept ones.

As in FusionBench's implementations (tanganke/fusion_bench: ``TSVM_utils.
compute_and_sum_svd_mem_reduction``, ``isotropic_merging/iso_utils.iso_c`` / ``iso_cts``, which
follow the authors' code): only 2-D tensors are decomposed; every other tensor (norms, biases,
scalars, rank >= 3) gets the mean of the task vectors (TSV-M, Iso-CTS: a running mean;
Iso-C: sum / N), and the result is base + lambda * merged delta. TSV-M's per-model ``weight``
scales a task vector before it is decomposed (FusionBench's list ``alpha``); ``lambda`` is
FusionBench's scalar ``alpha`` (TSV-M) or ``scaling_factor`` (Iso), default 1.0 as there.
Iso-CTS sizes the subspaces as FusionBench does: k = int(r * fraction), then
k = r - round((r - k) / N) * N (Python's round), int((r - k) / N) per task.

The methods need each whole matrix of every model at once (``whole``): a tensor is never
chunked, and planning refuses one whose job would exceed ``--job-memory``. The math runs in
the math dtype (fp32, or fp64 with ``dtype: float64``) on the job's device (GPU workers run
the SVDs there). SVD costs O(m n min(m, n)) per task: embeddings and lm_head are the slow part.
LAPACK's SVD and the matrix products round differently with different thread counts: raymerge's
workers run torch on one thread (Ray sets it from the task's CPUs), so runs are bit-reproducible,
while an in-process ``merge_whole`` on more threads, or a GPU worker, can differ in the last bits.

Differences from FusionBench: Iso-CTS projects the common subspace out as U (U' W) instead of
(U U') W (no m x m temporary; equal up to rounding); the polar factors multiply straight into
the result (FusionBench's ``multi_dot`` picks another order: rounding only); where FusionBench's
subspace sizing overshoots (round((r - k) / N) * N > r, e.g. r = 3, N = 2, fraction 0) raymerge
takes floor((r - k) / N) per task instead of a negative common size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec, PieceInfo, Stats


def _polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U V' of ``a`` (its nearest matrix with orthonormal columns
    or rows)."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def _running_mean(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    out = deltas[0].clone()
    for i, d in enumerate(deltas[1:], start=2):
        out += (d - out) / i
    return out


def _decomposed(base: torch.Tensor) -> bool:
    return base.dim() == 2 and base.numel() > 0


def tsv_delta(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """TSV-M's merged delta of 2-D task matrices."""
    m, n = deltas[0].shape
    r = min(m, n)
    k = int(r * (1 / len(deltas)))
    like = deltas[0]
    u_all, s_all, vh_all = like.new_zeros(m, r), like.new_zeros(r), like.new_zeros(r, n)
    for i, d in enumerate(deltas):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        u_all[:, i * k : (i + 1) * k] = u[:, :k]
        s_all[i * k : (i + 1) * k] = s[:k]
        vh_all[i * k : (i + 1) * k, :] = vh[:k, :]
    return (_polar(u_all) * s_all) @ _polar(vh_all)


def iso_c_delta(total: torch.Tensor) -> torch.Tensor:
    """Iso-C's merged delta of the summed 2-D task matrices: mean(s) U V'."""
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return (u @ vh) * s.mean()


def cts_sizes(r: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """(common subspace size, task-specific size per task), as FusionBench sizes them."""
    common = int(r * fraction)
    per_task = round((r - common) / n_tasks)
    if per_task * n_tasks > r:  # FusionBench would take a negative common size here
        per_task = (r - common) // n_tasks
    return r - per_task * n_tasks, per_task


def iso_cts_delta(deltas: Sequence[torch.Tensor], fraction: float) -> torch.Tensor:
    """Iso-CTS's merged delta of 2-D task matrices."""
    m, n = deltas[0].shape
    r = min(m, n)
    common, per = cts_sizes(r, len(deltas), fraction)
    u, s, vh = torch.linalg.svd(sum(deltas), full_matrices=False)
    uc, sc, vc = u[:, :common], s[:common], vh[:common, :]
    like = deltas[0]
    u_all, s_all, vh_all = like.new_zeros(m, r), like.new_zeros(r), like.new_zeros(r, n)
    for i, d in enumerate(deltas):
        u_t, s_t, vh_t = torch.linalg.svd(d - uc @ (uc.T @ d), full_matrices=False)
        u_all[:, i * per : (i + 1) * per] = u_t[:, :per]
        s_all[i * per : (i + 1) * per] = s_t[:per]
        vh_all[i * per : (i + 1) * per, :] = vh_t[:per, :]
    start = len(deltas) * per
    u_all[:, start : start + common] = uc
    s_all[start : start + common] = sc
    vh_all[start : start + common, :] = vc
    return (_polar(u_all) @ _polar(vh_all)) * s_all.mean()


def _kernel(kind: str):
    def merge(
        base: torch.Tensor,
        tensors: Sequence[torch.Tensor],
        model_params: Sequence[dict[str, Any]],
        params: dict[str, Any],
        *,
        info: PieceInfo | None = None,
        stats: Sequence[Stats] = (),
    ) -> torch.Tensor:
        deltas = [x - base for x in tensors]
        if kind == "tsv_m":
            deltas = [d * float(p["weight"]) for d, p in zip(deltas, model_params)]
        if kind == "iso_c":
            mean = sum(deltas) / len(deltas)
            delta = iso_c_delta(mean * len(deltas)) if _decomposed(base) else mean
        elif not _decomposed(base):
            delta = _running_mean(deltas)
        elif kind == "tsv_m":
            delta = tsv_delta(deltas)
        else:
            delta = iso_cts_delta(deltas, float(params["common_space_fraction"]))
        return base + delta * float(params["lambda"])

    merge.__name__ = kind
    merge.__doc__ = f"base + lambda * the {kind} delta of the task matrices (2-D), else the mean."
    return merge


LAMBDA = ParamSpec(
    "lambda",
    float,
    "global",
    default=1.0,
    doc="scale of the merged task vector (FusionBench's alpha / scaling_factor)",
)
_COMMON = dict(
    base="required",
    inputs=(1, None),
    whole=True,
)
TSV_M = MergeMethod(
    name="tsv_m",
    kernel=Kernel(_kernel("tsv_m")),
    params=(
        ParamSpec(
            "weight",
            float,
            "model",
            default=1.0,
            doc="scale of each task vector before its decomposition",
        ),
        LAMBDA,
    ),
    work_fixed=40,
    work_per_input=16,
    reference="https://arxiv.org/abs/2412.00081",
    doc="task singular vectors: top 1/N of each task's SVD, orthogonalised, summed",
    **_COMMON,
)
ISO_C = MergeMethod(
    name="iso_c",
    kernel=Kernel(_kernel("iso_c")),
    params=(LAMBDA,),
    work_fixed=24,
    work_per_input=4,
    reference="https://arxiv.org/abs/2502.04959",
    doc="task-arithmetic sum with a flat (isotropic) singular spectrum",
    **_COMMON,
)
ISO_CTS = MergeMethod(
    name="iso_cts",
    kernel=Kernel(_kernel("iso_cts")),
    params=(
        LAMBDA,
        ParamSpec(
            "common_space_fraction",
            float,
            "global",
            default=0.8,
            low=0.0,
            high=1.0,
            doc="share of the rank given to the common subspace",
        ),
    ),
    work_fixed=40,
    work_per_input=16,
    reference="https://arxiv.org/abs/2502.04959",
    doc="isotropic merge in a common plus per-task subspaces",
    **_COMMON,
)
