"""ZipIt's memory and time, stated before any tensor data is read (pure, headers only).

Two figures per run, checked against the memory of the largest node:

- **statistics actor**: one stage (a layer) of K models as float32 copies, plus the raw bytes of
  one model's stage being decoded; the activations of the actor's calibration shards (float32,
  K models); one batch's features and layer temporaries; the statistics of one stage's spaces
  (float64, and once more while they are handed to the object store) and the residual space's,
  which accumulate down the stack; plus the process itself (:data:`PROCESS_BYTES`).
- **matching, per space**: the statistics (float64 [C, C], C = K x width) and the correlation
  computed from them (float64, in place over the covariance); zipit's greedy matcher then works
  on two float32 [U, U] matrices plus the float32 copy it starts from (U = C / group: attention
  spaces are matched on whole heads); permute runs scipy's Hungarian solver on the float64
  [n, n] cross blocks. The time estimate is ``a x U^p`` with constants measured here
  (``benchmarks/zipit_match_time.py``, one CPU thread, float32); a GPU matcher was not measured.

Where float64 is used, and why: the statistics' sums of outer products (over millions of rows,
``outer / N - mean mean^T`` cancels) and the correlation computed from them. The matcher's working
matrices are float32 (similarities in [-1, 1], only compared, min-ed and scaled).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from raymerge.errors import InputError
from raymerge.io.header import TensorSource
from raymerge.zipit.spaces import Space, ZipLayout
from raymerge.zipit.stages import finished_at, n_stages, stage_tensors

PROCESS_BYTES = 400 << 20  # Python + torch + a Ray worker (as options.DEFAULT_JOB_MEMORY notes)
#: greedy zipit matcher, seconds = a * U**p (U = units matched), one CPU thread, float32,
#: correlation included; fitted on U = 2048..16384 (benchmarks/zipit_match_time.py)
ZIPIT_TIME = (4.0e-7, 1.85)
#: permute (Hungarian on the n x n cross block, n = U / K), same fit
PERMUTE_TIME = (2.0e-8, 2.1)
#: the correlation from the statistics, seconds = b * C**2 (C = features), same run
CORRELATION_TIME = 2.0e-8


@dataclass(frozen=True)
class CalibrationShape:
    """What the statistics see of the calibration set: rows per sample (tokens for decoders, 1
    for MLPs), the most samples in one shard, samples per batch, and input features (MLP)."""

    samples: int
    tokens: int
    shard_samples: int
    batch: int


@dataclass(frozen=True)
class SpaceCost:
    name: str
    width: int  # C: features over all models
    units: int  # U: what the matcher matches (C / group)
    bytes: int
    seconds: float


@dataclass(frozen=True)
class ZipBudget:
    """The figures of one zip (see the module docstring)."""

    actor_bytes: int
    parts: dict[str, int]  # the actor's figure by part
    spaces: tuple[SpaceCost, ...]
    shards_per_actor: int
    read_bytes: int = 0  # what one actor reads: the streamed stages of every model, once

    def lines(self) -> list[str]:
        """What ``raymerge plan`` and the run summary say."""
        from raymerge.summary import fmt_bytes

        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.parts.items())
        out = [
            f"zipit statistics: peak per actor {fmt_bytes(self.actor_bytes)} ({parts}; "
            f"{self.shards_per_actor} shard(s) per actor); each actor reads "
            f"{fmt_bytes(self.read_bytes)}, one layer at a time"
        ]
        total = sum(s.seconds for s in self.spaces)
        out.append(
            f"zipit matching: {len(self.spaces)} spaces, one task each, ~{total:.1f} CPU-s in all "
            "(one thread, constants measured here; a GPU matcher was not measured):"
        )
        groups: dict[tuple, list[str]] = {}
        for c in self.spaces:
            groups.setdefault((c.name.split(".")[0], c.width, c.units, c.bytes, c.seconds), [])
            groups[(c.name.split(".")[0], c.width, c.units, c.bytes, c.seconds)].append(c.name)
        for (_, width, units, nbytes, secs), names in groups.items():
            which = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)})"
            out.append(
                f"  {which}: C={width}, U={units}, {fmt_bytes(nbytes)} each, ~{secs:.1f} s each"
            )
        return out

    def as_json(self) -> dict:
        return {
            "actor_bytes": self.actor_bytes,
            "actor_parts": dict(self.parts),
            "actor_read_bytes": self.read_bytes,
            "shards_per_actor": self.shards_per_actor,
            "spaces": {
                s.name: {"width": s.width, "bytes": s.bytes, "seconds": round(s.seconds, 3)}
                for s in self.spaces
            },
        }


def _stage_bytes(
    arch: str, sources: Mapping[str, TensorSource], depth: int
) -> tuple[int, int, int]:
    """(float32 bytes, raw bytes) of the largest stage of one model, and all stages' raw bytes."""
    names = list(sources)
    best, total = (0, 0), 0
    for stage in range(n_stages(arch, depth)):
        members = [sources[n] for n in stage_tensors(arch, names, stage)]
        f32 = sum(math.prod(s.shape) * 4 for s in members)
        raw = sum(s.end - s.start for s in members)
        best = max(best, (f32, raw))
        total += raw
    return best[0], best[1], total


def _widths(arch: str, sources: Mapping[str, TensorSource], config: Mapping | None) -> dict:
    """Per-model widths the activations and temporaries scale with."""
    if arch == "mlp":
        outs = [s.shape[0] for n, s in sources.items() if n.endswith(".weight")]
        ins = [s.shape[1] for n, s in sources.items() if n.endswith(".weight")]
        widest = max(outs + ins)
        return {"act": widest, "batch_feats": widest, "layer_tmp": 2 * widest, "scores": 0}
    c = dict(config or {})
    d = int(c["hidden_size"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or d // heads)
    inter = int(c["intermediate_size"])
    return {
        "act": d,
        "batch_feats": heads * hd + inter + 2 * d,
        "layer_tmp": 4 * d + 2 * kv * hd + 2 * heads * hd + 3 * inter,
        "scores": 2 * heads,  # x T^2 per sample: attention scores and their softmax
    }


def space_cost(space: Space, n_models: int, matcher: str) -> SpaceCost:
    """Memory and estimated seconds of matching one space (see the module docstring)."""
    width = n_models * space.units * space.group
    units = n_models * space.units
    stats = 8 * width * width + 16 * width
    if matcher == "identity":
        return SpaceCost(space.name, width, units, 0, 0.0)
    corr_s = CORRELATION_TIME * width * width
    if matcher == "permute":
        n = space.units
        working = 2 * 8 * n * n
        a, p = PERMUTE_TIME
    else:
        working = 3 * 4 * units * units
        a, p = ZIPIT_TIME
    seconds = corr_s + a * units**p
    return SpaceCost(space.name, width, units, stats + 8 * width * width + working, seconds)


def zip_budget(
    zl: ZipLayout,
    sources: Mapping[str, TensorSource],
    config: Mapping | None,
    n_models: int,
    cal: CalibrationShape | None,
    matcher: str,
    shards_per_actor: int = 1,
) -> ZipBudget:
    """The figures of zipping ``n_models`` models shaped like ``sources`` (one model's
    headers); ``cal`` None: no statistics (``matcher: identity``)."""
    spaces = tuple(space_cost(s, n_models, matcher) for s in zl.spaces)
    if cal is None or matcher == "identity":
        return ZipBudget(0, {}, spaces, 0)
    f32, raw, streamed = _stage_bytes(zl.arch, sources, zl.depth)
    w = _widths(zl.arch, sources, config)
    rows = cal.shard_samples * cal.tokens * shards_per_actor
    brows = cal.batch * cal.tokens
    widest = max((s.width for s in spaces), default=0)
    res = next((s.width for s in spaces if s.name == "res"), 0)
    stage_stats = max(
        (
            sum(8 * c.width * c.width for c in spaces if c.name in group)
            for group in _stage_groups(zl)
        ),
        default=0,
    )
    parts = {
        "weights": n_models * f32 + raw,
        "activations": n_models * rows * w["act"] * 4,
        "batch": n_models * brows * (w["batch_feats"] + w["layer_tmp"]) * 4
        + brows * widest * 8
        + cal.batch * w["scores"] * cal.tokens**2 * 4,
        "statistics": 2 * stage_stats + shards_per_actor * 8 * res * res,
        "process": PROCESS_BYTES,
    }
    return ZipBudget(
        sum(parts.values()), parts, spaces, shards_per_actor, read_bytes=n_models * streamed
    )


def _stage_groups(zl: ZipLayout) -> list[set[str]]:
    """The spaces finished together at each stage (decoders: a layer's attention and MLP)."""
    names = [s.name for s in zl.spaces]
    return [
        set(finished_at(zl.arch, t, zl.depth, names)) - {"res"}
        for t in range(n_stages(zl.arch, zl.depth))
    ]


def check_budget(budget: ZipBudget, node_memory: int, where: str) -> None:
    """Refuse (:class:`InputError`) a zip whose actor or any space's matcher cannot fit on a
    node of ``node_memory`` bytes (``where``: which memory that is, for the message)."""
    from raymerge.summary import fmt_bytes

    problems = []
    if budget.actor_bytes > node_memory:
        problems.append(
            f"a statistics actor needs {fmt_bytes(budget.actor_bytes)} "
            f"({', '.join(f'{k} {fmt_bytes(v)}' for k, v in budget.parts.items())}); use more "
            "calibration shards or fewer samples"
        )
    for s in budget.spaces:
        if s.bytes > node_memory:
            problems.append(f"space {s.name!r} (C={s.width}) needs {fmt_bytes(s.bytes)} to match")
    if problems:
        raise InputError(
            f"zipit does not fit: the largest node has {fmt_bytes(node_memory)} ({where}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def local_memory() -> int:
    """This machine's physical memory."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def node_memory_for(
    node_memory: int | None, address: str | None, cluster: Callable[[], int] | None
) -> tuple[int, str] | None:
    """The node memory a zip's figures are checked against, and what it is: ``--node-memory``;
    else, connected (``cluster`` gives it), the cluster's largest node; else this machine's
    memory when the run starts a local Ray (None: a cluster at ``address`` not connected yet,
    checked once it is)."""
    if node_memory is not None:
        return node_memory, "--node-memory"
    if cluster is not None:
        return cluster(), "the cluster's largest node, Ray's memory resource"
    if address:
        return None
    return local_memory(), "this machine's memory"


def calibration_of(
    samples: int, tokens: int, shards: list[list[tuple[int, int]]], batch: int
) -> CalibrationShape:
    """The :class:`CalibrationShape` of ``samples`` split into ``shards`` (as the stage splits)."""
    most = max((sum(b - a for a, b in sh) for sh in shards), default=0)
    return CalibrationShape(samples, tokens, most, min(batch, max(samples, 1)))


def matching_timeout(stall_timeout: float, budget: ZipBudget | None) -> float:
    """How long a wait on matching tasks may see none finish: the stall timeout, but never
    below twice the slowest space's estimated matching time (0: for ever)."""
    if not stall_timeout:
        return 0.0
    slowest = max((c.seconds for c in budget.spaces), default=0.0) if budget else 0.0
    return max(stall_timeout, 2 * slowest)


__all__ = [
    "matching_timeout",
    "CalibrationShape",
    "SpaceCost",
    "ZipBudget",
    "calibration_of",
    "check_budget",
    "local_memory",
    "node_memory_for",
    "space_cost",
    "zip_budget",
]
