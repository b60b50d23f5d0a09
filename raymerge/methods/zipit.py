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
kernel gets, as external statistics, the matchings of the spaces its tensor touches. The planner
puts the tensor's layout (axes, source models) into its parameters under ``layout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import MergeMethod, ParamSpec, PieceInfo, Stats
from raymerge.zipit.apply import zip_tensor

MATCHERS = ("zipit", "permute", "identity")


def spaces_of(params: dict[str, Any]) -> tuple[str, ...]:
    """External statistics keys (``zipit:<space>``) a tensor's kernel needs."""
    axes = params.get("layout", {}).get("axes", [])
    return tuple(dict.fromkeys(f"zipit:{a[1]}" for a in axes if a[2] != "mean"))


def _zip(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    """W' = sum_k M_out^k W^k U_in^k for one whole tensor (see raymerge.zipit.apply)."""
    # a tensor in no feature space (or called outside a planned zipit run): the plain average
    layout = params.get("layout") or {
        "axes": [[0, "", "mean", 1]],
        "models": list(range(len(tensors))),
    }
    found = stats[0] if stats else {}
    matchings = {}
    for key in spaces_of(params):
        space = key.removeprefix("zipit:")
        n = sum(1 for k in found if k.startswith(f"{space}/assign."))
        matchings[space] = (
            [found[f"{space}/assign.{k}"] for k in range(n)],
            found[f"{space}/sizes"],
        )
    return zip_tensor(tensors, layout["models"], layout["axes"], matchings)


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
        kernel=_zip,
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
