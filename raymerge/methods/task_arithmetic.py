"""The task-vector family: task arithmetic, TIES, DARE, breadcrumbs and DELLA (the kernel).

All of them work on task vectors delta_i = x_i - base, following mergekit 0.1.5's generalized task
arithmetic:

1. sparsify each delta with its own ``density`` (none / magnitude / random / magnitude outliers /
   DELLA's rank-dependent random), optionally rescaled so its L1 norm matches the original
   (``rescale``);
2. weight: w_i * delta_i (``weight`` per model, required);
3. with sign consensus (ties, dare_ties, breadcrumbs_ties, della): elected sign = sign of the sum of
   weighted deltas (a zero sum counts as +); keep only entries agreeing with it (zeros never
   agree); divisor = sum of agreeing weights (0 -> 1). Without consensus: divisor = sum of weights
   (|.| < 1e-8 -> 1);
4. mixed = sum of kept weighted deltas, divided by the divisor if ``normalize``, times ``lambda``;
   result = base + mixed.

Papers: task arithmetic, Ilharco et al., ICLR 2023, https://arxiv.org/abs/2212.04089; TIES-Merging,
Yadav et al., NeurIPS 2023, https://arxiv.org/abs/2306.01708; DARE, Yu et al., ICML 2024,
https://arxiv.org/abs/2311.03099; Model Breadcrumbs, Davari & Belilovsky, ECCV 2024,
https://arxiv.org/abs/2312.06795; DELLA-Merging, Deep et al., 2024, https://arxiv.org/abs/2406.11617.

Differences from mergekit (see the README's method table): magnitude cutoffs keep every element
tied with the cutoff value (mergekit's argsort keeps an arbitrary subset); random masks come from a
seeded, chunk-invariant stream (``random_seed``, tensor name, model index, element offset) instead
of torch's global RNG, so they are reproducible but not equal to mergekit's draws; rescale sums are
accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods.base import Kernel, MergeMethod, ParamSpec, PieceInfo, Stats
from raymerge.methods.sparsify import Sparsification, check_della, mask_fns, stat_rounds, thresholds
from raymerge.methods.sparsify import Sparsification as S
from raymerge.methods.steps import KERNEL_STEP_BYTES, Steps

RESCALE_EPS = 1e-7


class Consensus(str, Enum):
    """How the weighted deltas combine: all of them (``none``), or only those agreeing with
    the elected sign (``sign``, TIES)."""

    NONE = "none"
    SIGN = "sign"


def _merge(
    kind: Sparsification,
    consensus: Consensus,
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo,
    stats: Sequence[Stats] = (),
    math_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The merged block, computed in steps with exactly the arithmetic of: delta_i = x_i - base;
    masked, rescaled, weighted; elected = +1 where their sum is >= 0, else -1; agree_i = sign
    (0 for zeros) == elected; mixed = 0 + sum of agreeing (or all) weighted deltas, / divisor,
    * lambda; + base. Inputs may come in their storage dtype (math in ``math_dtype``, default
    the base's); the result goes into ``out`` (contiguous, the block's elements, any dtype:
    converted per step) or a new tensor in the math dtype, and comes back shaped like the base.

    Long because it is one fused loop over cache-sized steps: every temporary stays in cache,
    and splitting it into functions per stage would add a pass over memory per stage.
    """
    md = math_dtype or base.dtype
    masks = mask_fns(kind, info, base, tensors, model_params, stats, math_dtype)
    rescale = kind != "none" and params.get("rescale") and stats and "cat:before" in stats[-1]
    factors: list[float | None] = [None for _ in tensors]
    if rescale:
        before = stats[-1]["cat:before"].sum(dim=0)
        after = stats[-1]["cat:after"].sum(dim=0)
        for i, m in enumerate(masks):
            if m is not None and before[i] >= RESCALE_EPS and after[i] >= RESCALE_EPS:
                factors[i] = float(before[i] / after[i])
    weights = [float(p["weight"]) for p in model_params]
    normalize = params["normalize"]
    lam = params["lambda"]
    divisor = sum(weights)
    if abs(divisor) < 1e-8:
        divisor = 1.0

    # magnitude cutoffs t as hardshrink(d, t'): d where |d| > t' (t' the next float below t,
    # so: |d| >= t, and NaN), else 0 -- (d * mask) but for the sign of zeros, which nothing
    # below can see (zeros never agree, and all sums start from +0)
    shrink: list[float | None] = [None for _ in tensors]
    if kind == "magnitude":
        for i, th in enumerate(thresholds(kind, info, model_params, stats)):
            if th is not None and th[1] == float("inf") and th[0] < float("inf"):
                below = torch.nextafter(torch.tensor(th[0], dtype=md), torch.tensor(0, dtype=md))
                shrink[i] = float(below)

    if out is None:
        out = torch.empty(base.shape, dtype=md, device=base.device)
    res = out.view(-1)
    item = torch.empty(0, dtype=md).element_size()
    step = max(1 << 12, KERNEL_STEP_BYTES // ((len(tensors) + 5) * item))
    st = Steps(base, tensors, math_dtype, step, deltas=len(tensors), scratch=4)
    # 0-dim constants: ops below broadcast them instead of taking a separate pass
    zero, minus_one = (torch.tensor(v, dtype=md, device=st.device) for v in (0.0, -1.0))
    w_min = min(weights)
    # without consensus, a plain first model goes straight into mixed = 0 + w * d
    fold = consensus is Consensus.NONE and masks[0] is None
    for s, e in st.steps:
        k = e - s
        bs = st.base(s, e)
        tmp, tmp2, div, mixed = (t[:k] for t in st.scratch)
        deltas = []
        for i in range(len(tensors)):
            d = st.delta(i, s, e, bs)
            if masks[i] is None:
                if i == 0 and fold:
                    torch.add(zero, d, alpha=weights[0], out=mixed)  # one rounding either way
                    continue
                d.mul_(weights[i])
            elif shrink[i] is not None:
                torch.ops.aten.hardshrink.out(d, shrink[i], out=d)
                if factors[i] is not None:
                    d.mul_(factors[i])
                d.mul_(weights[i])
            elif factors[i] is None:
                # 0 + w * d * mask: (d * mask) * w but for the sign of zeros (see above)
                torch.addcmul(zero, d, masks[i](d, s, e, tmp, tmp2), value=weights[i], out=d)
            else:
                d.mul_(masks[i](d, s, e, tmp, tmp2)).mul_(factors[i]).mul_(weights[i])
            deltas.append(d)
        if consensus is Consensus.SIGN:
            total = deltas[0] if len(deltas) == 1 else torch.add(deltas[0], deltas[1], out=tmp)
            for d in deltas[2:]:
                total.add_(d)
            # elected sign: +1 where total >= 0, else -1 (NaN included)
            elected = torch.add(minus_one, torch.ge(total, 0, out=tmp), alpha=2, out=tmp)
            for j, (d, w) in enumerate(zip(deltas, weights)):
                agree = torch.eq(torch.sign(d, out=tmp2), elected, out=tmp2)
                torch.addcmul(mixed if j else zero, d, agree, out=mixed)  # from 0 + d * agree
                if normalize and j == 0:
                    torch.mul(agree, w, out=div)  # = 0 + w * agree but for the sign of a zero
                elif normalize:
                    div.add_(agree, alpha=w)
            if normalize:
                if w_min > 0:  # divisor 0 (nothing agrees: mixed is +0 or NaN) or >= w_min
                    div.clamp_min_(w_min)
                else:  # no agreeing weight: divide by 1
                    div.add_(torch.eq(div, 0, out=tmp2))
                mixed.div_(div)
        else:
            if not fold:
                torch.add(zero, deltas.pop(0), out=mixed)
            for d in deltas:
                mixed.add_(d)
            if normalize:
                mixed.div_(divisor)
        if lam != 1:
            mixed.mul_(lam)
        if res.dtype == md:
            torch.add(mixed, bs, out=res[s:e])
        else:  # (faster than an add converting on the fly)
            res[s:e].copy_(mixed.add_(bs))
    return out.view(base.shape)


WEIGHT = ParamSpec("weight", float, "model", required=True, doc="scale of each task vector")
DENSITY = ParamSpec(
    "density",
    float,
    "model",
    default=1.0,
    low=0.0,
    high=1.0,
    low_open=True,
    doc="fraction of each task vector to keep",
)
GAMMA = ParamSpec(
    "gamma",
    float,
    "model",
    default=0.01,
    low=0.0,
    high=1.0,
    doc="fraction of largest magnitudes dropped",
)
EPSILON = ParamSpec(
    "epsilon",
    float,
    "model",
    default=0.15,
    low=0.0,
    high=1.0,
    high_open=True,
    doc="spread of DELLA keep probabilities",
)
LAMBDA = ParamSpec("lambda", float, "global", default=1.0, doc="scale of the merged task vector")
INT8_MASK = ParamSpec(
    "int8_mask",
    bool,
    "global",
    default=False,
    doc="accepted for mergekit compatibility; masks are always 1 byte here",
)


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec(
        "normalize", bool, "global", default=default, doc="divide by the sum of (agreeing) weights"
    )


def _rescale(default: bool) -> ParamSpec:
    return ParamSpec(
        "rescale",
        bool,
        "global",
        default=default,
        doc="rescale kept values to the original L1 norm",
    )


def _family(
    name: str,
    kind: Sparsification,
    consensus: Consensus,
    normalize: bool,
    rescale: bool,
    reference: str,
    doc: str,
    extra: tuple[ParamSpec, ...] = (),
) -> MergeMethod:
    # task_arithmetic accepts density and rescale too (without effect), as mergekit does
    params = (WEIGHT, _normalize(normalize), LAMBDA, INT8_MASK, DENSITY, _rescale(rescale))
    params += tuple(extra)
    return MergeMethod(
        name=name,
        kernel=Kernel(partial(_merge, kind, consensus), inputs="raw"),
        params=params,
        base="required",
        work_fixed=16,
        work_per_input=8,
        reference=reference,
        doc=doc,
        stat_rounds=partial(stat_rounds, kind),
        row_local=(lambda params: True) if kind is S.DELLA else (lambda params: False),
        **({"check": check_della} if kind is S.DELLA else {}),
        # without sparsification every input reaches the result (x - base, times w, summed)
        nonfinite_propagates=kind is S.NONE,
    )


TASK_ARITHMETIC = _family(
    "task_arithmetic",
    S.NONE,
    Consensus.NONE,
    False,
    False,
    "https://arxiv.org/abs/2212.04089",
    "base + lambda * sum of weighted task vectors",
)
TIES = _family(
    "ties",
    S.MAGNITUDE,
    Consensus.SIGN,
    True,
    False,
    "https://arxiv.org/abs/2306.01708",
    "trim to top-density magnitudes, elect signs, disjoint mean",
)
DARE_TIES = _family(
    "dare_ties",
    S.RANDOM,
    Consensus.SIGN,
    False,
    True,
    "https://arxiv.org/abs/2311.03099",
    "random drop with rescale, then TIES sign consensus",
)
DARE_LINEAR = _family(
    "dare_linear",
    S.RANDOM,
    Consensus.NONE,
    False,
    True,
    "https://arxiv.org/abs/2311.03099",
    "random drop with rescale, then a weighted sum",
)
BREADCRUMBS = _family(
    "breadcrumbs",
    S.MAGNITUDE_OUTLIERS,
    Consensus.NONE,
    False,
    False,
    "https://arxiv.org/abs/2312.06795",
    "drop the largest gamma and smallest magnitudes",
    (GAMMA,),
)
BREADCRUMBS_TIES = _family(
    "breadcrumbs_ties",
    S.MAGNITUDE_OUTLIERS,
    Consensus.SIGN,
    False,
    False,
    "https://arxiv.org/abs/2312.06795",
    "breadcrumbs sparsification with TIES sign consensus",
    (GAMMA,),
)
DELLA = _family(
    "della",
    S.DELLA,
    Consensus.SIGN,
    True,
    True,
    "https://arxiv.org/abs/2406.11617",
    "magnitude-ranked random drop (MagPrune) with TIES sign consensus",
    (EPSILON,),
)
DELLA_LINEAR = _family(
    "della_linear",
    S.DELLA,
    Consensus.NONE,
    False,
    True,
    "https://arxiv.org/abs/2406.11617",
    "magnitude-ranked random drop (MagPrune), then a weighted sum",
    (EPSILON,),
)

METHODS = (
    TASK_ARITHMETIC,
    TIES,
    DARE_TIES,
    DARE_LINEAR,
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DELLA,
    DELLA_LINEAR,
)
