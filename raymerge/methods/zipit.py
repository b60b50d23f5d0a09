"""ZipIt! and its permutation / identity baselines as registry entries.

ZipIt! (Stoica, Bolya, Bjorner, Ramesh, Hearn, Hoffman; ICLR 2024,
https://arxiv.org/abs/2305.03053) merges models trained from *different initializations* on
different tasks: activation statistics on calibration data give feature correlations, a greedy
matcher merges the most correlated features (also within one model, ``alpha``/``beta``), and every
tensor is rewritten with the merge/unmerge matrices of the feature spaces it writes and reads.
``permute`` is the permutation baseline (Git Re-Basin-style weight matching by activations,
Ainsworth et al., ICLR 2023, https://arxiv.org/abs/2209.04836, solved with the Hungarian
algorithm), ``matcher: identity`` is plain weight averaging through the same path.

Unlike the other methods this one is not elementwise: the statistics and matching stage runs
before the per-tensor jobs (:mod:`raymerge.zipit`, scheduled by :mod:`raymerge.executor`), and the
kernel gets, as external statistics, the matchings of the spaces its tensor touches
(``external``: space name -> :class:`raymerge.zipit.matching.Matching`). The planner puts the
tensor's layout (a :class:`raymerge.zipit.spaces.ZipTensor`) into its parameters as ``layout``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from raymerge.zipit.matching import Matching
else:
    from raymerge._lazy import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec, PieceInfo, Stats
from raymerge.zipit.apply import zip_tensor
from raymerge.zipit.spaces import Axis

MATCHERS = ("zipit", "permute", "identity")


def spaces_of(params: dict[str, Any]) -> tuple[str, ...]:
    """The feature spaces whose matchings a tensor's kernel needs (its ``layout`` parameter, a
    :class:`raymerge.zipit.spaces.ZipTensor` the planner sets)."""
    layout = params.get("layout")
    return layout.spaces if layout is not None else ()


def _zip(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo,
    stats: Sequence[Stats] = (),
    external: Mapping[str, Matching] | None = None,
) -> torch.Tensor:
    """W' = sum_k M_out^k W^k U_in^k for one whole tensor (see raymerge.zipit.apply)."""
    layout = params.get("layout")
    if layout is None:  # a tensor in no feature space (or outside a planned run): the average
        return zip_tensor(tensors, range(len(tensors)), (Axis(0, "", "mean"),), {})
    return zip_tensor(tensors, layout.models, layout.axes, external or {})


ALPHA = ParamSpec(
    "alpha",
    float,
    "global",
    default=0.5,
    low=0.0,
    high=1.0,
    doc="damping of a merged feature's correlations (repeated matches)",
)
BETA = ParamSpec(
    "beta",
    float,
    "global",
    default=1.0,
    low=0.0,
    high=1.0,
    doc="share of the merges each model may do within itself (0: only across models)",
)
STOP_AT = ParamSpec(
    "stop_at",
    int,
    "global",
    default=None,
    low=1,
    doc="partial zip: zip the first k layers, keep the rest of each model as a head",
)


def _matcher(default: str) -> ParamSpec:
    return ParamSpec(
        "matcher",
        str,
        "global",
        default=default,
        choices=MATCHERS,
        doc="zipit (greedy, within-model merges), permute (Hungarian) or identity (averaging)",
    )


def _entry(name: str, matcher: str, inputs: tuple[int, int | None], doc: str) -> MergeMethod:
    return MergeMethod(
        name=name,
        kernel=Kernel(_zip),
        params=(ALPHA, BETA, STOP_AT, _matcher(matcher)),
        base="ignored",
        work_fixed=8,
        work_per_input=8,
        reference="https://arxiv.org/abs/2305.03053",
        doc=doc,
        inputs=inputs,
        whole=True,
        calibration=True,
        external=spaces_of,
    )


ZIPIT = _entry(
    "zipit", "zipit", (2, None), "match features by activation correlation (ZipIt!), then merge"
)
PERMUTE = _entry(
    "permute", "permute", (2, 2), "permute one model's features onto the other's, then average"
)
