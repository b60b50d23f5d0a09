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

import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

from raymerge.methods import selection
from raymerge.methods.base import (
    MergeMethod,
    ParamSpec,
    PieceInfo,
    Stats,
    UniformStream,
    unit_sums,
)

RESCALE_EPS = 1e-7

# On CPU, the kernel and the histogram rounds go through their input in steps, with a few
# reused step-sized buffers: few enough bytes to stay in cache, enough elements per torch call
# to keep the per-call overhead small (tuned on one thread: benchmarks/kernels_cpu.py). Other
# devices take larger steps. Elementwise results do not depend on the step.
KERNEL_STEP_BYTES = 8 << 20  # all of the kernel's step buffers together
HIST_STEP = 1 << 19  # elements per step of the histogram rounds (also amortizes a histogram)
DEVICE_STEP = 1 << 22  # elements per step off the CPU


def _steps(n: int, device: torch.device, step: int) -> list[tuple[int, int]]:
    step = step if device.type == "cpu" else max(step, DEVICE_STEP)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


_SCRATCH = threading.local()


def _scratch(name: str, rows: int, size: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A (rows, size) scratch tensor kept per thread and reused by the next call: a fresh
    allocation of a few MB costs page faults on first touch, block after block."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    key = (name, dtype, torch.device(device))
    t = bufs.get(key)
    if t is None or t.numel() < rows * size:
        t = bufs[key] = torch.empty(rows * size, dtype=dtype, device=device)
    return t[: rows * size].view(rows, size)


class _Steps:
    """Step-sized views of a block's flat inputs in the math dtype (converted into reused
    buffers where the storage dtype differs) and of scratch buffers.

    The stat rounds and the kernel take their inputs in the storage dtype (``raw_inputs``, see
    ``raymerge.methods.merge_piece``) so that the conversion happens here, a step at a time,
    while the step is in cache."""

    def __init__(self, base, tensors, math_dtype, step: int, deltas: int, scratch: int = 0):
        self.md = math_dtype or base.dtype
        self.b = base.reshape(-1)
        self.xs = [x.reshape(-1) for x in tensors]
        self.n = self.b.numel()
        self.device = self.b.device
        self.steps = _steps(self.n, self.device, step)
        self.size = max((e - s for s, e in self.steps), default=0)
        self.bbuf = None if self.b.dtype == self.md else self.scratch_of("b", 1, self.md)[0]
        self.d = self.scratch_of("d", deltas, self.md)
        self.scratch = self.scratch_of("s", scratch, self.md)

    def scratch_of(self, name: str, rows: int, dtype: torch.dtype) -> torch.Tensor:
        return _scratch(name, rows, self.size, dtype, self.device)

    def base(self, s: int, e: int) -> torch.Tensor:
        if self.bbuf is None:
            return self.b[s:e]
        return self.bbuf[: e - s].copy_(self.b[s:e])

    def delta(self, i: int, s: int, e: int, bs: torch.Tensor, slot: int | None = None):
        """x_i - base in the math dtype (``bs``: ``self.base(s, e)``), as ``torch.sub`` gives,
        in delta buffer ``slot`` (default ``i``)."""
        x = self.xs[i][s:e]
        d = self.d[i if slot is None else slot, : e - s]
        if x.dtype == self.md:
            return torch.sub(x, bs, out=d)
        return d.copy_(x).sub_(bs)  # the conversion is exact; then one rounding, as above


def _md(t: torch.Tensor, math_dtype) -> torch.Tensor:
    return t if math_dtype is None else t.to(math_dtype)


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


def _histogram_pass(base, tensors, math_dtype, models, visit) -> None:
    """Per step and model index in ``models``: ``visit(i, bits, tmp, tmp2)`` with the magnitude
    bits of the step's delta (``selection.magnitude_keys``; may be overwritten) and two int32
    scratch buffers of the step's size."""
    if not models:
        return
    st = _Steps(base, tensors, math_dtype, HIST_STEP, deltas=1)
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


def _thresholds(
    kind: str, info: PieceInfo, model_params, stats
) -> list[tuple[float, float] | None]:
    """Per model: (low, high) magnitude bounds of the kept set, or None = keep all.

    Remembered (per thread) for the last statistics objects seen: every block of a piece asks
    again, and each answer takes a few histogram scans."""
    ranks = [_magnitude_ranks(kind, info.numel, p) for p in model_params]
    key = (kind, info.numel, repr(ranks))
    if ranks and any(r for r in ranks):
        held = (stats[0]["hi"], stats[1]["lo"])
        last = _SCRATCH.__dict__.get("thresholds")
        if last is not None and last[0] == key and all(a is b for a, b in zip(last[1], held)):
            return last[2]
        out = _find_thresholds(kind, info, model_params, stats)
        _SCRATCH.thresholds = (key, held, out)
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


def _mask_fns(
    kind: str, info: PieceInfo, base, tensors, model_params, stats, math_dtype
) -> list[MaskFn | None]:
    """Per model: None (keep all) or ``fn(d, s, e, out, tmp)``: the keep-mask of ``d``, the
    delta of elements [s, e) of the block, as 1.0 / 0.0 in ``out`` (``tmp``: scratch).

    Multiplying by these float masks gives exactly what multiplying by boolean masks gives, and
    float comparisons run several times faster than boolean ones on CPU."""
    if kind in ("magnitude", "magnitude_outliers"):
        return [
            None if th is None else partial(_mask_magnitude, th[0], th[1])
            for th in _thresholds(kind, info, model_params, stats)
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
                d = torch.sub(_md(x, math_dtype), _md(base, math_dtype))
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
    fns = _mask_fns(kind, info, base, tensors, model_params, prev, math_dtype)
    base = _md(base, math_dtype)
    before, after = [], []
    for x, fn in zip(tensors, fns):
        d = torch.sub(_md(x, math_dtype), base)
        a = d.abs()
        before.append(unit_sums(a, info.unit))
        if fn is not None:
            flat = d.view(-1)
            a.mul_(fn(flat, 0, flat.numel(), flat, torch.empty_like(flat)).view(a.shape))
        after.append(unit_sums(a, info.unit))
    return {"cat:before": torch.stack(before, dim=1), "cat:after": torch.stack(after, dim=1)}


def _check_della(params: dict[str, Any], model_params) -> list[str]:
    return [
        f"model {i}: density {p['density']} +/- epsilon {p['epsilon']} must stay inside (0, 1)"
        for i, p in enumerate(model_params)
        if p["density"] < 1
        and not (0 < p["density"] - p["epsilon"] and p["density"] + p["epsilon"] < 1)
    ]


def _raw(fn, whole_piece: bool = False):
    """Mark a stat round or kernel as taking storage-dtype inputs plus ``math_dtype`` (and, for
    kernels, ``out``); a ``whole_piece`` round takes the whole piece in one call, as it works
    in steps of its own: see ``raymerge.methods.merge_piece``."""
    fn.raw_inputs = True
    fn.whole_piece = whole_piece
    return fn


def _stat_rounds(kind: str, params: dict[str, Any], model_params) -> tuple:
    rounds: list = []
    if kind in ("magnitude", "magnitude_outliers") and any(
        p.get("density", 1.0) < 1 for p in model_params
    ):
        rounds += [
            _raw(partial(_round_high, kind), whole_piece=True),
            _raw(partial(_round_low, kind), whole_piece=True),
        ]
    if (
        kind != "none"
        and params.get("rescale")
        and any(p.get("density", 1.0) < 1 for p in model_params)
    ):
        rounds.append(_raw(partial(_round_rescale, kind)))
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
    math_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The merged block, computed in steps with exactly the arithmetic of: delta_i = x_i - base;
    masked, rescaled, weighted; elected = +1 where their sum is >= 0, else -1; agree_i = sign
    (0 for zeros) == elected; mixed = 0 + sum of agreeing (or all) weighted deltas, / divisor,
    * lambda; + base. Inputs may come in their storage dtype (math in ``math_dtype``, default
    the base's); the result goes into ``out`` (contiguous, the block's elements, any dtype:
    converted per step) or a new tensor in the math dtype, and comes back shaped like the base.
    """
    md = math_dtype or base.dtype
    masks = _mask_fns(kind, info, base, tensors, model_params, stats, math_dtype)
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
        for i, th in enumerate(_thresholds(kind, info, model_params, stats)):
            if th is not None and th[1] == float("inf") and th[0] < float("inf"):
                below = torch.nextafter(torch.tensor(th[0], dtype=md), torch.tensor(0, dtype=md))
                shrink[i] = float(below)

    if out is None:
        out = torch.empty(base.shape, dtype=md, device=base.device)
    res = out.view(-1)
    item = torch.empty(0, dtype=md).element_size()
    step = max(1 << 12, KERNEL_STEP_BYTES // ((len(tensors) + 5) * item))
    st = _Steps(base, tensors, math_dtype, step, deltas=len(tensors), scratch=4)
    # 0-dim constants: ops below broadcast them instead of taking a separate pass
    zero, minus_one = (torch.tensor(v, dtype=md, device=st.device) for v in (0.0, -1.0))
    w_min = min(weights)
    # without consensus, a plain first model goes straight into mixed = 0 + w * d
    fold = not consensus and masks[0] is None
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
        if consensus:
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
    kernel = _raw(partial(_merge, kind, consensus))
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
