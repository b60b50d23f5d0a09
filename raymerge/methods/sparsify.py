"""Sparsification of task vectors, exactly and chunk by chunk: TIES, DARE, breadcrumbs, DELLA.

Each model's delta is masked by one :class:`Sparsification`:

- ``magnitude`` (TIES): keep the ``k = int(density * numel)`` largest |delta|; the cutoff is
  found exactly by a two-round radix select (:mod:`raymerge.methods.selection`), and every
  element tied with it is kept (mergekit's argsort keeps an arbitrary subset);
- ``magnitude_outliers`` (breadcrumbs): drop the largest ``gamma`` fraction, keep the next
  ``density``;
- ``random`` (DARE): keep with probability ``density``, from a seeded chunk-invariant stream;
- ``della`` (DELLA's MagPrune): keep probability rising with the magnitude rank in each row.

``rescale`` scales the kept values so their L1 norm matches the original (float64 per-unit
sums, a third statistics round). Papers: see :mod:`raymerge.methods.task_arithmetic`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods import selection
from raymerge.methods.base import PieceInfo, StatRound, Stats, unit_sums
from raymerge.methods.rng import UniformStream
from raymerge.methods.steps import HIST_STEP, THREAD, Steps, to_math


class Sparsification(str, Enum):
    NONE = "none"
    MAGNITUDE = "magnitude"
    RANDOM = "random"
    MAGNITUDE_OUTLIERS = "magnitude_outliers"
    DELLA = "della"


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


def _histogram_pass(base, tensors, math_dtype, models, visit) -> None:
    """Per step and model index in ``models``: ``visit(i, bits, tmp, tmp2)`` with the magnitude
    bits of the step's delta (``selection.magnitude_keys``; may be overwritten) and two int32
    scratch buffers of the step's size."""
    if not models:
        return
    st = Steps(base, tensors, math_dtype, HIST_STEP, deltas=1)
    tmp = st.scratch_of("k", 3, torch.int32)
    for s, e in st.steps:
        bs = st.base(s, e)
        for i in models:
            d = st.delta(i, s, e, bs, slot=0)
            # float32: the bits replace the delta in place (it is not needed again)
            own = d.view(torch.int32) if d.dtype == torch.float32 else tmp[2, : e - s]
            visit(i, selection.magnitude_keys(d, own), tmp[0, : e - s], tmp[1, : e - s])


def _round_high(kind, info, base, tensors, model_params, params, prev, *, math_dtype=None) -> Stats:
    hist = torch.zeros(len(tensors), selection.HI_BINS, dtype=torch.int64, device=base.device)
    models = [i for i, p in enumerate(model_params) if _magnitude_ranks(kind, info.numel, p)]

    def visit(i, bits, tmp, tmp2):
        selection.add_high_histogram(hist[i], selection.high_keys(bits, out=bits))

    _histogram_pass(base, tensors, math_dtype, models, visit)
    return {"hi": hist}


def _round_low(kind, info, base, tensors, model_params, params, prev, *, math_dtype=None) -> Stats:
    hi = prev[0]["hi"]
    lo = torch.zeros(len(tensors), 2, selection.LO_BINS, dtype=torch.int64, device=base.device)
    rank_bins: dict[int, list[int]] = {}  # model -> high bin of each rank
    for i, p in enumerate(model_params):
        ranks = _magnitude_ranks(kind, info.numel, p) or []
        if ranks:
            rank_bins[i] = [selection.locate(hi[i], rank)[0] for rank in ranks]

    def visit(i, bits, tmp, tmp2):
        first, *rest = rank_bins[i]
        if rest and rest[0] != first:  # a second bin (low_keys leaves the bits as they were)
            selection.add_low_histogram(lo[i, 1], selection.low_keys(bits, rest[0], tmp, tmp2))
        selection.add_low_histogram(lo[i, 0], selection.low_keys(bits, first, tmp, tmp2))

    _histogram_pass(base, tensors, math_dtype, list(rank_bins), visit)
    for i, bs in rank_bins.items():
        if len(bs) == 2 and bs[0] == bs[1]:
            lo[i, 1] = lo[i, 0]  # both ranks in one bin
    return {"lo": lo}


def thresholds(kind: str, info: PieceInfo, model_params, stats) -> list[tuple[float, float] | None]:
    """Per model: (low, high) magnitude bounds of the kept set, or None = keep all.

    Remembered (per thread) for the last statistics objects seen: every block of a piece asks
    again, and each answer takes a few histogram scans."""
    ranks = [_magnitude_ranks(kind, info.numel, p) for p in model_params]
    key = (kind, info.numel, repr(ranks))
    if ranks and any(r for r in ranks):
        held = (stats[0]["hi"], stats[1]["lo"])
        last = THREAD.__dict__.get("thresholds")
        if last is not None and last[0] == key and all(a is b for a, b in zip(last[1], held)):
            return last[2]
        out = _find_thresholds(kind, info, model_params, stats)
        THREAD.thresholds = (key, held, out)
        return out
    return _find_thresholds(kind, info, model_params, stats)


def _find_thresholds(kind: str, info: PieceInfo, model_params, stats):
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


def _della_probs(
    info: PieceInfo, i: int, d: torch.Tensor, p: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """DELLA's MagPrune as flat (uniforms, keep probabilities): an element is kept where its
    uniform < its probability, which rises linearly with the magnitude rank in each row (along
    dim 1; rank <= 1 tensors are one row), from density - epsilon to density + epsilon."""
    density, eps = p["density"], p["epsilon"]
    if density + eps >= 1 or density - eps <= 0:
        raise ValueError(
            f"della: density {density} +/- epsilon {eps} must stay inside (0, 1) "
            f"(tensor {info.name!r})"
        )
    m = d.reshape(1, -1) if d.dim() < 2 else d
    order = torch.argsort(m.abs(), dim=1, stable=True)
    n = m.shape[1]
    # each row's ranks: the inverse permutation of its order (what argsort(order) gives)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=d.device).expand_as(order))
    del order
    ranks = ranks.to(torch.float32)
    rank_norm = ranks / (n - 1) if n > 1 else torch.zeros_like(ranks)
    probs = (density - eps) + rank_norm * 2 * eps
    return UniformStream(info, i, d.device), probs.reshape(-1)


MaskFn = Callable[..., "torch.Tensor"]  # (d, start, end, out, tmp) -> mask


def mask_fns(
    kind: str, info: PieceInfo, base, tensors, model_params, stats, math_dtype
) -> list[MaskFn | None]:
    """Per model: None (keep all) or ``fn(d, s, e, out, tmp)``: the keep-mask of ``d``, the
    delta of elements [s, e) of the block, as 1.0 / 0.0 in ``out`` (``tmp``: scratch).

    Multiplying by these float masks gives exactly what multiplying by boolean masks gives, and
    float comparisons run several times faster than boolean ones on CPU."""
    if kind in ("magnitude", "magnitude_outliers"):
        return [
            None if th is None else partial(_mask_magnitude, th[0], th[1])
            for th in thresholds(kind, info, model_params, stats)
        ]
    if kind == "random":
        return [
            None
            if p["density"] >= 1
            else partial(_mask_below, UniformStream(info, i, base.device), p["density"])
            for i, p in enumerate(model_params)
        ]
    if kind == "della":
        fns: list[MaskFn | None] = []
        for i, (x, p) in enumerate(zip(tensors, model_params)):
            if p["density"] >= 1:
                fns.append(None)
            elif p["density"] <= 0:
                fns.append(_mask_nothing)
            else:
                d = torch.sub(to_math(x, math_dtype), to_math(base, math_dtype))
                fns.append(partial(_mask_below, *_della_probs(info, i, d, p)))
                del d
        return fns
    return [None for _ in tensors]


def _mask_magnitude(low, high, d, s, e, out, tmp) -> torch.Tensor:
    a = torch.abs(d, out=out)
    if high == float("inf"):
        return torch.ge(a, low, out=out)
    torch.ge(a, low, out=tmp)
    return torch.le(a, high, out=out).mul_(tmp)


def _mask_below(u: UniformStream, limit, d, s, e, out, tmp) -> torch.Tensor:
    return torch.lt(u.take(s, e), limit[s:e] if isinstance(limit, torch.Tensor) else limit, out=out)


def _mask_nothing(d, s, e, out, tmp) -> torch.Tensor:
    return out.zero_()


def _round_rescale(
    kind, info, base, tensors, model_params, params, prev, *, math_dtype=None
) -> Stats:
    fns = mask_fns(kind, info, base, tensors, model_params, prev, math_dtype)
    base = to_math(base, math_dtype)
    before, after = [], []
    for x, fn in zip(tensors, fns):
        d = torch.sub(to_math(x, math_dtype), base)
        a = d.abs()
        before.append(unit_sums(a, info.unit))
        if fn is not None:
            flat = d.view(-1)
            a.mul_(fn(flat, 0, flat.numel(), flat, torch.empty_like(flat)).view(a.shape))
        after.append(unit_sums(a, info.unit))
    return {"cat:before": torch.stack(before, dim=1), "cat:after": torch.stack(after, dim=1)}


def check_della(params: dict[str, Any], model_params) -> list[str]:
    return [
        f"model {i}: density {p['density']} +/- epsilon {p['epsilon']} must stay inside (0, 1)"
        for i, p in enumerate(model_params)
        if p["density"] < 1
        and not (0 < p["density"] - p["epsilon"] and p["density"] + p["epsilon"] < 1)
    ]


def stat_rounds(kind: Sparsification, params: dict[str, Any], model_params) -> tuple:
    rounds: list = []
    if kind in ("magnitude", "magnitude_outliers") and any(
        p.get("density", 1.0) < 1 for p in model_params
    ):
        rounds += [
            StatRound(partial(_round_high, kind), inputs="raw", scope="piece"),
            StatRound(partial(_round_low, kind), inputs="raw", scope="piece"),
        ]
    if (
        kind != "none"
        and params.get("rescale")
        and any(p.get("density", 1.0) < 1 for p in model_params)
    ):
        rounds.append(StatRound(partial(_round_rescale, kind), inputs="raw"))
    return tuple(rounds)
