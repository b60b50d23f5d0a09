"""The task-vector family: task arithmetic, TIES, DARE, breadcrumbs and DELLA.

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
from functools import partial
from typing import Any

import torch

from raymerge.methods import selection
from raymerge.methods.base import MergeMethod, ParamSpec, PieceInfo, Stats, uniform, unit_sums

RESCALE_EPS = 1e-7


def _deltas(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.sub(x, base) for x in tensors]


# --------------------------------------------------------------------------- sparsification


def _magnitude_ranks(kind: str, numel: int, p: dict[str, Any]) -> list[int] | None:
    """Ascending 0-based ranks of |delta| bounding the kept set, or None (keep all)."""
    density = p.get("density", 1.0)
    if density >= 1 or numel == 0:
        return None
    if kind == "magnitude":
        if density <= 0:
            return []
        k = max(1, int(density * numel))
        return [numel - k]
    target = int(density * numel)  # magnitude_outliers (breadcrumbs)
    n_top = int(p.get("gamma", 0.0) * numel)
    n_bot = max(0, numel - target - n_top)
    return [] if target == 0 else [n_bot, n_bot + target - 1]


def _round_high(kind, info, base, tensors, model_params, params, prev) -> Stats:
    hists = []
    for d, p in zip(_deltas(base, tensors), model_params):
        ranks = _magnitude_ranks(kind, info.numel, p)
        hists.append(
            selection.high_histogram(selection.magnitude_bits(d))
            if ranks
            else torch.zeros(selection.HI_BINS, dtype=torch.int64, device=d.device)
        )
    return {"hi": torch.stack(hists)}


def _round_low(kind, info, base, tensors, model_params, params, prev) -> Stats:
    hi = prev[0]["hi"]
    out = []
    for i, (d, p) in enumerate(zip(_deltas(base, tensors), model_params)):
        ranks = _magnitude_ranks(kind, info.numel, p) or []
        bits = selection.magnitude_bits(d) if ranks else None
        rows = []
        for r in range(2):
            if r < len(ranks):
                b, _ = selection.locate(hi[i], ranks[r])
                rows.append(selection.low_histogram(bits, b))
            else:
                rows.append(torch.zeros(selection.LO_BINS, dtype=torch.int64, device=d.device))
        out.append(torch.stack(rows))
    return {"lo": torch.stack(out)}


def _thresholds(
    kind: str, info: PieceInfo, model_params, stats
) -> list[tuple[float, float] | None]:
    """Per model: (low, high) magnitude bounds of the kept set, or None = keep all."""
    out: list[tuple[float, float] | None] = []
    for i, p in enumerate(model_params):
        ranks = _magnitude_ranks(kind, info.numel, p)
        if ranks is None:
            out.append(None)
            continue
        if not ranks:
            out.append((float("inf"), float("-inf")))  # keep nothing
            continue
        vals = []
        for r, rank in enumerate(ranks):
            b, within = selection.locate(stats[0]["hi"][i], rank)
            low, _ = selection.locate(stats[1]["lo"][i][r], within)
            vals.append(selection.value_of(b, low))
        out.append((vals[0], float("inf")) if kind == "magnitude" else (vals[0], vals[1]))
    return out


def _della_mask(info: PieceInfo, i: int, d: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """DELLA's MagPrune: keep probability rises linearly with the magnitude rank in each row
    (along dim 1; rank <= 1 tensors are one row), from density - epsilon to density + epsilon."""
    density, eps = p["density"], p["epsilon"]
    if density + eps >= 1 or density - eps <= 0:
        raise ValueError(
            f"della: density {density} +/- epsilon {eps} must stay inside (0, 1) "
            f"(tensor {info.name!r})"
        )
    shape = d.shape
    m = d.reshape(1, -1) if d.dim() < 2 else d
    order = torch.argsort(m.abs(), dim=1, stable=True)
    ranks = torch.argsort(order, dim=1, stable=True).to(torch.float32)
    n = m.shape[1]
    rank_norm = ranks / (n - 1) if n > 1 else torch.zeros_like(ranks)
    probs = (density - eps) + rank_norm * 2 * eps
    u = uniform(info, i, d.device).reshape(m.shape)
    return (u < probs).reshape(shape)


def _masks(kind: str, info: PieceInfo, deltas, model_params, stats) -> list[torch.Tensor | None]:
    """Per model keep-mask for the piece (None = keep all)."""
    if kind in ("magnitude", "magnitude_outliers"):
        masks = []
        for d, th in zip(deltas, _thresholds(kind, info, model_params, stats)):
            if th is None:
                masks.append(None)
            elif th[1] == float("inf"):
                masks.append(d.abs() >= th[0])
            else:
                a = d.abs()
                masks.append((a >= th[0]) & (a <= th[1]))
        return masks
    if kind == "random":
        return [
            None
            if p["density"] >= 1
            else uniform(info, i, d.device).reshape(d.shape) < p["density"]
            for i, (d, p) in enumerate(zip(deltas, model_params))
        ]
    if kind == "della":
        return [
            None
            if p["density"] >= 1
            else (
                torch.zeros_like(d, dtype=torch.bool)
                if p["density"] <= 0
                else _della_mask(info, i, d, p)
            )
            for i, (d, p) in enumerate(zip(deltas, model_params))
        ]
    return [None for _ in deltas]


def _round_rescale(kind, info, base, tensors, model_params, params, prev) -> Stats:
    deltas = _deltas(base, tensors)
    masks = _masks(kind, info, deltas, model_params, prev)
    before, after = [], []
    for d, m in zip(deltas, masks):
        a = d.abs()
        before.append(unit_sums(a, info.unit))
        after.append(unit_sums(a if m is None else a * m, info.unit))
    return {"cat:before": torch.stack(before, dim=1), "cat:after": torch.stack(after, dim=1)}


def _check_della(params: dict[str, Any], model_params) -> list[str]:
    return [
        f"model {i}: density {p['density']} +/- epsilon {p['epsilon']} must stay inside (0, 1)"
        for i, p in enumerate(model_params)
        if p["density"] < 1
        and not (0 < p["density"] - p["epsilon"] and p["density"] + p["epsilon"] < 1)
    ]


def _stat_rounds(kind: str, params: dict[str, Any], model_params) -> tuple:
    rounds: list = []
    if kind in ("magnitude", "magnitude_outliers") and any(
        p.get("density", 1.0) < 1 for p in model_params
    ):
        rounds += [partial(_round_high, kind), partial(_round_low, kind)]
    if (
        kind != "none"
        and params.get("rescale")
        and any(p.get("density", 1.0) < 1 for p in model_params)
    ):
        rounds.append(partial(_round_rescale, kind))
    return tuple(rounds)


# --------------------------------------------------------------------------- kernel


def _merge(
    kind: str,
    consensus: bool,
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    info: PieceInfo,
    stats: Sequence[Stats] = (),
) -> torch.Tensor:
    deltas = _deltas(base, tensors)
    masks = _masks(kind, info, deltas, model_params, stats)
    rescale = kind != "none" and params.get("rescale") and stats and "cat:before" in stats[-1]
    if rescale:
        before = stats[-1]["cat:before"].sum(dim=0)
        after = stats[-1]["cat:after"].sum(dim=0)
    weights = [float(p["weight"]) for p in model_params]
    for i, m in enumerate(masks):
        if m is not None:
            deltas[i].mul_(m)
            if (
                rescale
                and masks[i] is not None
                and before[i] >= RESCALE_EPS
                and after[i] >= RESCALE_EPS
            ):
                deltas[i].mul_(float(before[i] / after[i]))
        deltas[i].mul_(weights[i])
    mixed = torch.zeros_like(base)
    divisor: torch.Tensor | float
    if consensus:
        total = torch.zeros_like(base)
        for d in deltas:
            total.add_(d)
        elected = torch.where(total >= 0, 1.0, -1.0).to(base.dtype)
        del total
        divisor = torch.zeros_like(base)
        for d, w in zip(deltas, weights):
            agree = torch.sign(d) == elected
            mixed.add_(d * agree)
            divisor.add_(agree.to(base.dtype), alpha=w)
        divisor[divisor == 0] = 1
    else:
        for d in deltas:
            mixed.add_(d)
        divisor = sum(weights)
        if abs(divisor) < 1e-8:
            divisor = 1.0
    if params["normalize"]:
        mixed.div_(divisor)
    if params["lambda"] != 1:
        mixed.mul_(params["lambda"])
    return mixed.add_(base)


# --------------------------------------------------------------------------- registry entries

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


def _family(name, kind, consensus, normalize, rescale, reference, doc, extra=()):
    # task_arithmetic accepts density and rescale too (without effect), as mergekit does
    params = (WEIGHT, _normalize(normalize), LAMBDA, INT8_MASK, DENSITY, _rescale(rescale))
    params += tuple(extra)
    kernel = partial(_merge, kind, consensus)
    kernel.__doc__ = f"{doc} (sparsification: {kind}, sign consensus: {consensus})."
    return MergeMethod(
        name=name,
        kernel=kernel,
        params=params,
        base="required",
        work_fixed=16,
        work_per_input=8,
        reference=reference,
        doc=doc,
        stat_rounds=partial(_stat_rounds, kind),
        row_local=(lambda params: True) if kind == "della" else (lambda params: False),
        **({"check": _check_della} if kind == "della" else {}),
    )


TASK_ARITHMETIC = _family(
    "task_arithmetic",
    "none",
    False,
    False,
    False,
    "https://arxiv.org/abs/2212.04089",
    "base + lambda * sum of weighted task vectors",
)
TIES = _family(
    "ties",
    "magnitude",
    True,
    True,
    False,
    "https://arxiv.org/abs/2306.01708",
    "trim to top-density magnitudes, elect signs, disjoint mean",
)
DARE_TIES = _family(
    "dare_ties",
    "random",
    True,
    False,
    True,
    "https://arxiv.org/abs/2311.03099",
    "random drop with rescale, then TIES sign consensus",
)
DARE_LINEAR = _family(
    "dare_linear",
    "random",
    False,
    False,
    True,
    "https://arxiv.org/abs/2311.03099",
    "random drop with rescale, then a weighted sum",
)
BREADCRUMBS = _family(
    "breadcrumbs",
    "magnitude_outliers",
    False,
    False,
    False,
    "https://arxiv.org/abs/2312.06795",
    "drop the largest gamma and smallest magnitudes",
    (GAMMA,),
)
BREADCRUMBS_TIES = _family(
    "breadcrumbs_ties",
    "magnitude_outliers",
    True,
    False,
    False,
    "https://arxiv.org/abs/2312.06795",
    "breadcrumbs sparsification with TIES sign consensus",
    (GAMMA,),
)
DELLA = _family(
    "della",
    "della",
    True,
    True,
    True,
    "https://arxiv.org/abs/2406.11617",
    "magnitude-ranked random drop (MagPrune) with TIES sign consensus",
    (EPSILON,),
)
DELLA_LINEAR = _family(
    "della_linear",
    "della",
    False,
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
