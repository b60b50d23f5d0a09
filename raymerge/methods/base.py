"""The merge-method contract: typed parameter specs, piece geometry, and whole-tensor statistics.

A method is a pure function of tensors (already in the math dtype, on the job's device) and
already-resolved parameters. It never sees files, Ray or fsspec, so it runs unchanged on tiny test
tensors, on CPU workers and on GPU workers.

**Chunks.** The planner may hand a kernel only part of a tensor (a *piece*: flat elements
[elem_start, elem_end) of the row-major tensor, always a whole number of *stat units*). Methods
declare what they need so that the chunked result equals the unchunked one bit for bit:

- ``row_local(params)``: the result for a row depends only on that row (SLERP, DELLA): pieces are
  whole rows, and rank <= 1 tensors are never split.
- ``stat_rounds(params, model_params)``: whole-tensor statistics (TIES/breadcrumbs magnitude
  thresholds, L1 rescale sums, Model Stock cosines), computed in rounds *before* the kernel. Each
  round maps a piece to a dict of additive partials: keys starting with ``cat:`` are per-stat-unit
  vectors concatenated in piece order, every other key is summed. Unchunked tensors go through
  exactly the same rounds with one piece, so both paths reduce identical numbers in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch


Scope = Literal["model", "global"]
Stats = dict[str, "torch.Tensor"]
FLAT_UNIT = 1 << 16  # stat unit for rank <= 1 tensors and for rows too big to be one unit
MAX_ROW_UNIT = 1 << 24
SUM_BLOCK = 1 << 14  # row_sums adds at most this many elements per torch reduction


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method accepts.

    ``scope="model"`` parameters (``weight``, ``density``) may be set per model and fall back to
    the global ``parameters`` block (mergekit's per-input parameters); ``scope="global"`` ones
    (``normalize``, ``lambda``, ``t``) are method-wide and only valid at the top level.
    """

    name: str
    type: type
    scope: Scope
    default: Any = None
    required: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    doc: str = ""
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """Problem with one evaluated value, or None."""
        if self.choices:
            if value in self.choices:
                return None
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.type is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.type in (float, int):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {value!r}"
            if not math.isfinite(value):
                return f"must be a finite number, got {value!r}"
            lo_bad = self.low is not None and (
                value < self.low or (self.low_open and value == self.low)
            )
            hi_bad = self.high is not None and (
                value > self.high or (self.high_open and value == self.high)
            )
            if lo_bad or hi_bad:
                return f"must be in {self.range_text()}, got {value!r}"
            if self.type is int and value != int(value):
                return f"must be a whole number, got {value!r}"
        return None

    def range_text(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{lo}{low}, {high}{hi}"


@dataclass(frozen=True)
class PieceInfo:
    """Where a piece sits in its tensor; what chunk-invariant statistics and randomness need."""

    name: str
    shape: tuple[int, ...]
    elem_start: int
    elem_end: int
    seed: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def unit(self) -> int:
        return stat_unit(self.shape)

    @classmethod
    def whole(cls, name: str, shape: tuple[int, ...], seed: int = 0) -> PieceInfo:
        return cls(name, tuple(shape), 0, math.prod(shape), seed)


def stat_unit(shape: Sequence[int]) -> int:
    """Elements per stat unit: a row for matrices with moderate rows, else a fixed flat block.

    A function of the shape alone, so every chunking of a tensor sees the same units.
    """
    if len(shape) >= 2 and shape[0] > 0:
        row = math.prod(shape[1:])
        if 0 < row <= MAX_ROW_UNIT:
            return row
    return FLAT_UNIT


def row_sums(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sums (in ``dtype``, default float64) of the rows of 2-D ``x``, each independent of the
    other rows and of torch's threads.

    With several threads torch may reduce a long row in per-thread partials when it is the
    only output but serially among several rows, so ``x[:1].sum(1)`` and ``x.sum(1)[:1]`` can
    differ in the last bits (seen for float32 rows of ~1M elements summed in float64). Here
    no reduction spans more than :data:`SUM_BLOCK` elements: rows are summed in fixed blocks,
    then the block sums the same way. Rows of at most ``SUM_BLOCK`` elements are summed as
    ``x.sum(dim=1)`` sums them."""
    dtype = dtype or torch.float64
    rows, n = x.shape
    if n <= SUM_BLOCK:
        return x.sum(dim=1, dtype=dtype)
    full = n // SUM_BLOCK * SUM_BLOCK
    parts = [x[:, :full].reshape(rows, -1, SUM_BLOCK).sum(dim=2, dtype=dtype)]
    if n > full:
        parts.append(x[:, full:].sum(dim=1, dtype=dtype, keepdim=True))
    return row_sums(torch.cat(parts, dim=1), dtype)


def total(x: torch.Tensor) -> torch.Tensor:
    """The float64 sum of all of ``x`` (e.g. of a ``cat:`` statistic), independent of torch's
    threads (:func:`row_sums`)."""
    return row_sums(x.reshape(1, -1))[0]


def task_vectors(base: torch.Tensor | None, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs' differences from the base (the inputs themselves without one)."""
    return list(tensors) if base is None else [x - base for x in tensors]


def gram_partials(xs: Sequence[torch.Tensor], unit: int) -> torch.Tensor:
    """Per stat unit, the float64 dot products of every pair i <= j of ``xs`` (a ``cat:``
    statistic shaped [units, pairs]; :func:`gram` reduces it)."""
    n = len(xs)
    sums = [unit_sums(xs[i] * xs[j], unit) for i in range(n) for j in range(i, n)]
    return torch.stack(sums, dim=1)


def gram(partials: torch.Tensor, n: int) -> list[list[float]]:
    """The n x n Gram matrix (Python floats) from reduced :func:`gram_partials`."""
    flat = [float(total(partials[:, k])) for k in range(partials.shape[1])]
    g = [[0.0] * n for _ in range(n)]
    k = 0
    for i in range(n):
        for j in range(i, n):
            g[i][j] = g[j][i] = flat[k]
            k += 1
    return g


def unit_sums(x: torch.Tensor, unit: int) -> torch.Tensor:
    """Float64 sums of consecutive ``unit``-element blocks of flat ``x`` (the last may be short);
    each block's sum depends on its elements only (:func:`row_sums`)."""
    flat = x.reshape(-1)
    n = flat.numel()
    full = n // unit * unit
    parts = []
    if full:
        parts.append(row_sums(flat[:full].reshape(-1, unit)))
    if n > full:
        parts.append(row_sums(flat[full:].reshape(1, -1)))
    if not parts:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    return torch.cat(parts)


def combine(partials: Sequence[Stats]) -> Stats:
    """Reduce per-piece partials (in piece order): ``cat:`` keys concatenate, others sum."""
    out: Stats = {}
    for key in partials[0]:
        vals = [p[key] for p in partials]
        if key.startswith("cat:"):
            out[key] = torch.cat(vals)
        else:
            acc = vals[0].clone()
            for v in vals[1:]:
                acc += v
            out[key] = acc
    return out


Inputs = Literal["math", "raw"]


@dataclass(frozen=True)
class Kernel:
    """A method's merge function and how the block engine calls it.

    ``fn(base, tensors, model_params, params, *, info, stats)`` returns the merged block in the
    math dtype (``inputs="math"``: blocks arrive converted). With ``inputs="raw"`` blocks arrive
    in their storage dtype with the keywords ``math_dtype`` and ``out`` (the block's slice of the
    output, any dtype), and ``fn`` converts and writes a cache-sized step at a time. Methods that
    use statistics computed before the jobs (ZipIt's matchings, :attr:`MergeMethod.external`)
    also get the keyword ``external``.
    """

    fn: Callable[..., torch.Tensor]
    inputs: Inputs = "math"


@dataclass(frozen=True)
class StatRound:
    """One round of whole-tensor statistics: ``fn(info, base, tensors, model_params, params,
    prev)`` maps a block (``scope="block"``) or the whole piece (``scope="piece"``, for rounds
    that step through their input themselves) to a dict of additive partials (see the module
    docstring). ``inputs`` as for :class:`Kernel` (raw rounds get ``math_dtype``)."""

    fn: Callable[..., Stats]
    inputs: Inputs = "math"
    scope: Literal["block", "piece"] = "block"


def _no_rounds(params: dict[str, Any], model_params: Sequence[dict[str, Any]]) -> tuple:
    return ()


def _not_row_local(params: dict[str, Any]) -> bool:
    return False


def _never(params: dict[str, Any]) -> bool:
    return False


def _no_check(params: dict[str, Any], model_params: Sequence[dict[str, Any]]) -> list[str]:
    return []


def _no_external(params: dict[str, Any]) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    ``kernel``: the merge function (:class:`Kernel`). ``base``: "required" (the kernel gets the
    base model's tensor; the base is not one of ``tensors``), "optional" (as required when a
    ``base_model`` is configured, else the kernel gets None), "ignored" (only the listed models
    are combined), "input" (mergekit's ignored base as in Karcher: a configured base is one more
    merged model, appended after the listed ones when not among them).
    ``inputs``: (min, max) number of merged models besides the base (max None = unbounded).
    ``work_fixed`` / ``work_per_input``: bytes of temporaries per output element, for the
    planner's memory estimate.
    """

    name: str
    kernel: Kernel
    params: tuple[ParamSpec, ...]
    base: Literal["required", "optional", "ignored", "input"]
    work_fixed: int
    work_per_input: int
    reference: str
    doc: str = ""
    inputs: tuple[int, int | None] = (1, None)
    stat_rounds: Callable[[dict[str, Any], Sequence[dict[str, Any]]], tuple[StatRound, ...]] = (
        _no_rounds  # the rounds a tensor with these parameters needs, in order
    )
    row_local: Callable[[dict[str, Any]], bool] = _not_row_local
    # problems with the resolved parameters of one tensor (combinations a single spec can't see)
    check: Callable[[dict[str, Any], Sequence[dict[str, Any]]], list[str]] = _no_check
    # whole: the kernel needs the whole tensor at once (never chunked or split into blocks);
    # whole_if(params): the same for tensors with these parameters only
    whole: bool = False
    whole_if: Callable[[dict[str, Any]], bool] = _never
    # calibration: the method needs activation statistics from calibration data (ZipIt)
    calibration: bool = False
    # external(params): keys of statistics computed before the jobs (not from the tensor's own
    # chunks) that the kernel of this tensor needs, e.g. ZipIt's matchings of its spaces
    external: Callable[[dict[str, Any]], tuple[str, ...]] = _no_external
    # nonfinite_propagates: a NaN/Inf in any input always makes the result non-finite (plain
    # weighted sums), so the job checks the result only and looks at the inputs just to name
    # the culprit: one pass over the output instead of one over every input
    nonfinite_propagates: bool = False

    def is_whole(self, params: dict[str, Any]) -> bool:
        """Whether a tensor with these method-wide parameters must be merged in one piece."""
        return self.whole or self.whole_if(params)

    def uses_base(self, base_model: str | None) -> bool:
        """Whether the kernel gets a base tensor, given the config's ``base_model``."""
        return self.base == "required" or (self.base == "optional" and bool(base_model))

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def work_bytes(self, n_inputs: int) -> int:
        return self.work_fixed + self.work_per_input * n_inputs
