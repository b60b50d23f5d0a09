"""ZipIt's statistics and matching stage, run on the cluster before the per-tensor jobs.

1. **Statistics** (layer-streamed): actors each take a fixed set of calibration shards and run
   them through the K models one stage (layer) at a time (:class:`raymerge.zipit.stream.Streamer`:
   range-reads only that layer of each model, then frees it). Every stage returns the statistics
   of the spaces it finished, one object per (shard, space).
2. **Reduce**: per space, a fixed tree of reduce tasks sums the shard statistics in shard order,
   so the result never depends on the number of actors or on timing.
3. **Matching**: one task per space, given only that space's statistics, submitted as soon as
   they are reduced (early layers are matched while later ones are still being streamed); on a
   GPU when the cluster has one (and the space's working set fits it), else on a CPU, float32.
   The stage keeps at most ``lookahead`` stages of statistics waiting for their matchers.
4. The matchings (space name -> :class:`raymerge.zipit.matching.Matching`) go to the apply jobs
   through the object store. Every wait is bounded (``--stall-timeout``; matching: at least
   twice the slowest space's estimate).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from raymerge.config import MergeConfig
from raymerge.execution.cluster import bounded_get
from raymerge.execution.pool import Pool
from raymerge.io.header import TensorSource
from raymerge.io.reader import ModelLayout
from raymerge.options import ExecOptions, RunOptions
from raymerge.params import resolve_parameters
from raymerge.plan import Plan
from raymerge.redaction import redact
from raymerge.storage import Location, resolve
from raymerge.zipit.budget import ZipBudget, check_budget, matching_timeout, node_memory_for
from raymerge.zipit.spaces import Space, ZipLayout
from raymerge.zipit.stages import finished_at, n_stages

if TYPE_CHECKING:
    from raymerge.zipit.matching import Matching
    from raymerge.zipit.stats import FeatureStats


def _device() -> str:
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


@ray.remote
class _StreamActor:
    """Streams its calibration shards through the K models, a stage per call."""

    def __init__(self, arch: str, models: list, config: dict | None, spaces: list, depth: int):
        from raymerge.zipit.stream import Streamer

        self.streamer = Streamer(arch, models, config, spaces, depth, _device())

    def begin(self, x: Any, shards: list) -> None:
        self.streamer.begin(x, shards)

    def step(self, stage: int) -> Any:
        """``(info, *stats)``: stats per shard (in order), per finished space (in order)."""
        per_shard, info = self.streamer.step(stage)
        flat = [s for shard in per_shard for s in shard]
        return (info, *flat) if flat else info

    def peak_rss(self) -> int:
        from raymerge.worker import peak_rss

        return peak_rss()


@ray.remote
def _sum_stats(a: FeatureStats, b: FeatureStats) -> FeatureStats:
    return a + b


@ray.remote
def _match_space(
    stats: FeatureStats | None, space: Space, sizes: list[int], kind: str, alpha: float, beta: float
) -> tuple[Matching, dict[str, Any]]:
    """One space's matching, from that space's statistics only. float64 for the correlation
    (from float64 sums that cancel), float32 for the greedy matcher's working matrices; on the
    GPU Ray gave this task when the working matrices fit its free memory."""
    import torch

    from raymerge.zipit.matching import group_similarity, match, match_identity

    t0 = time.perf_counter()
    units = [n // space.group for n in sizes]
    if kind == "identity" or stats is None:
        return match_identity(units), {"device": "none", "seconds": 0.0}
    corr = stats.correlation()
    if space.group > 1:
        corr = group_similarity(corr, list(sizes), space.group)
    device = _device()
    if device == "cuda" and torch.cuda.mem_get_info()[0] < 12 * sum(units) ** 2 + (64 << 20):
        device = "cpu"  # three float32 [U, U] matrices do not fit the GPU's free memory
    corr = corr.to(torch.float32)
    m = match(
        kind,
        corr,
        units,
        alpha=alpha,
        beta=beta if space.within else 0.0,
        dtype=torch.float32,
        device=device,
    )
    return m, {"device": device, "seconds": time.perf_counter() - t0}


@dataclass(frozen=True)
class _Slots:
    """How the stage places its work on the cluster."""

    actors: int
    actor_opts: dict[str, Any]
    match_opts: dict[str, Any]
    reduce_opts: dict[str, Any]
    lookahead: int

    @classmethod
    def of(cls, n_shards: int, opts: ExecOptions, actors: int | None = None) -> _Slots:
        """At most one actor per shard and per GPU (else one per CPU but one). Matchers run
        beside the actors on the slots they leave (half a GPU each, or the CPUs left); with none
        left (``actors`` forced, or one CPU) they wait for the actors to finish and the lookahead
        is unbounded."""
        res = ray.cluster_resources()
        cpus = max(1, int(res.get("CPU", 1)))
        gpus = int(res.get("GPU", 0))
        # idle pooled workers (keep_workers) may hold every CPU: do not wait for them
        pooled = opts.keep_workers > 0 or Pool.adopt(1) is not None
        if gpus:
            n = actors or max(1, min(n_shards, gpus))
            actor = {"num_gpus": 0.5, "num_cpus": 0 if pooled else 1}
            match = {"num_gpus": 0.5, "num_cpus": 0}
            free = 2 * gpus - n
        else:
            n = actors or max(1, min(n_shards, cpus - 1))
            actor = {"num_cpus": 0 if pooled else min(1.0, cpus / n)}
            match = {"num_cpus": 0 if pooled else 1}
            free = cpus - n if not pooled else 1
        return cls(n, actor, match, {"num_cpus": 0}, max(2, free) if free > 0 else 1 << 30)


def _tree(parts: list[Any], opts: dict[str, Any]) -> Any:
    """The sum of ``parts`` (refs, in shard order) as the balanced tree
    :func:`raymerge.zipit.stats.tree_reduce` adds (halves, left first); the root's ref."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    return _sum_stats.options(**opts).remote(_tree(parts[:mid], opts), _tree(parts[mid:], opts))


def stream_stats(
    layout: ZipLayout,
    models: list[tuple[Location, dict[str, TensorSource]]],
    config: dict | None,
    x: Any,
    shards: list[list[tuple[int, int]]],
    opts: ExecOptions,
    on_space: Callable[[str, Any, _Slots], Any],
    actors: int | None = None,
    budget: ZipBudget | None = None,
) -> dict[str, Any]:
    """Stream the statistics of every space; ``on_space(name, ref, slots)`` gets each space's
    reduced statistics (an object ref) as soon as its reduce is submitted and returns a ref to
    wait for (its matching) before the stage ``lookahead`` stages later is submitted. Returns
    what it cost (actors, peak RSS, seconds per stage, bytes read). ``actors``: force the number
    of actors (tests, benchmarks); ``budget``: the memory each actor asks Ray for.

    Long because the pipeline (actors, per-stage submission under a lookahead, per-space
    reduce trees) reads best as one loop."""
    arch, depth = layout.arch, layout.depth
    names = [s.name for s in layout.spaces]
    slots = _Slots.of(len(shards), opts, actors)
    mine = [list(range(i, len(shards), slots.actors)) for i in range(slots.actors)]
    opts_a = {**slots.actor_opts, **({"memory": budget.actor_bytes} if budget else {})}
    actors = [
        _StreamActor.options(**opts_a).remote(arch, models, config, names, depth)
        for _ in range(slots.actors)
    ]
    t0 = time.perf_counter()
    try:
        x_ref = ray.put(x)
        for a, own in zip(actors, mine):
            a.begin.remote(x_ref, [(s, shards[s]) for s in own])
        infos: list[list[Any]] = []
        by_stage: list[list[Any]] = []
        for t in range(n_stages(arch, depth)):
            if t >= slots.lookahead and (waiting := by_stage[t - slots.lookahead]):
                bounded_get(
                    waiting, matching_timeout(opts.stall_timeout, budget), "zipit matching task"
                )
            done = finished_at(arch, t, depth, names)
            parts: dict[str, list[Any]] = {s: [None] * len(shards) for s in done}
            infos.append([])
            for a, own in zip(actors, mine):
                n = len(own) * len(done)
                refs = a.step.options(num_returns=1 + n).remote(t)
                refs = refs if n else [refs]
                infos[-1].append(refs[0])
                for pos, shard in enumerate(own):
                    for q, space in enumerate(done):
                        parts[space][shard] = refs[1 + pos * len(done) + q]
            by_stage.append([])
            for space in done:
                waited = on_space(space, _tree(parts[space], slots.reduce_opts), slots)
                if waited is not None:
                    by_stage[-1].append(waited)
        wait = opts.stall_timeout
        flat = bounded_get([r for refs in infos for r in refs], wait, "zipit statistics step")
        stage_infos = [flat[i : i + len(actors)] for i in range(0, len(flat), len(actors))]
        stats_s = time.perf_counter() - t0
        peaks = bounded_get([a.peak_rss.remote() for a in actors], wait, "zipit actor")
    finally:
        for a in actors:
            ray.kill(a)
    return {
        "actors": len(actors),
        "actor_peak_rss": max(peaks, default=0),
        "actor_private_rss": max((i.rss_private for st in stage_infos for i in st), default=0),
        "stats_s": stats_s,
        "stage_s": [round(max(i.seconds for i in st), 4) for st in stage_infos],
        "stats_bytes_read": sum(i.bytes_read for st in stage_infos for i in st),
        "stage_weight_bytes": max((i.weight_bytes for st in stage_infos for i in st), default=0),
    }


def stream_and_match(
    layout: ZipLayout,
    models: list[tuple[Location, dict[str, TensorSource]]],
    config: dict | None,
    x: Any,
    shards: list[list[tuple[int, int]]],
    params: dict[str, Any],
    opts: ExecOptions,
    budget: ZipBudget | None = None,
) -> tuple[dict[str, Matching], dict[str, Any]]:
    """Statistics of every space, streamed, and each space's matching as soon as its statistics
    are reduced (see the module docstring); each task asks Ray for the memory ``budget`` gives
    it. Also what it cost."""
    spaces = {s.name: s for s in layout.spaces}
    need = {c.name: c.bytes for c in budget.spaces} if budget else {}
    matched: dict[str, Any] = {}

    def match(name: str, stats: Any, slots: _Slots) -> Any:
        mem = {"memory": need[name]} if need.get(name) else {}
        matched[name] = _match_space.options(**slots.match_opts, **mem).remote(
            stats,
            spaces[name],
            [spaces[name].units * spaces[name].group] * len(models),
            params["matcher"],
            params["alpha"],
            params["beta"],
        )
        return matched[name]

    info = stream_stats(layout, models, config, x, shards, opts, match, budget=budget)
    got = bounded_get(
        list(matched.values()), matching_timeout(opts.stall_timeout, budget), "zipit matching task"
    )
    results = dict(zip(matched, got))
    info["match_devices"] = sorted({r[1]["device"] for r in results.values()})
    info["match_s_by_space"] = {k: round(r[1]["seconds"], 4) for k, r in results.items()}
    return {k: r[0] for k, r in results.items()}, info


def cluster_node_memory() -> int:
    """The largest alive node's memory that Ray admits tasks and actors against (its
    ``memory`` resource)."""
    return int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n["Alive"]), default=0))


@dataclass
class ZipStage:
    """The stage for one zipit/permute run: prepared (calibration read and checked, memory
    figures stated and checked) on the driver before anything is claimed, run on the cluster
    before the jobs."""

    cfg: MergeConfig
    layout: ZipLayout
    models: list[ModelLayout]
    calibration: Any  # torch.Tensor of inputs, None for matcher: identity
    params: dict[str, Any]
    shards: list[list[tuple[int, int]]]
    budget: ZipBudget
    opts: RunOptions
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls, cfg: MergeConfig, plan: Plan, layouts: list[ModelLayout], opts: RunOptions
    ) -> ZipStage | None:
        zl = plan.zip_layout
        if zl is None:
            return None
        from raymerge.zipit.gather import (
            check_calibration,
            load_calibration,
            shard_ranges,
            zip_figures,
        )

        refs = cfg.input_refs()
        models = [layouts[refs.index(m.model)] for m in cfg.models or []]
        params = dict(resolve_parameters(cfg, "", 0.0).method)
        x, shards = None, []
        if params["matcher"] != "identity" and cfg.calibration is not None:
            loc = resolve(cfg.calibration.url, cfg.storage_options)
            x = load_calibration(loc, zl.arch, cfg.calibration.samples)
            shapes = {n: t.shape for n, t in models[0].tensors.items()}
            check_calibration(x, zl.arch, shapes, redact(loc.url))
            c = cfg.calibration
            shards = [s for s in shard_ranges(len(x), c.batch_size, c.shards) if s]
        shape = None if x is None else (int(x.shape[0]), int(x.shape[1]))
        budget = zip_figures(cfg, zl, models, shape)
        stage = cls(cfg, zl, models, x, params, shards, budget, opts)
        stage.check(connected=False)
        return stage

    def check(self, connected: bool) -> None:
        """Refuse a zip that no node can hold (before any tensor data is read)."""
        address = self.opts.execution.address or os.environ.get("RAY_ADDRESS")
        mem = node_memory_for(
            self.opts.node_memory, address, cluster_node_memory if connected else None
        )
        if mem is not None:
            check_budget(self.budget, *mem)
            self.info["node_memory"] = {"bytes": mem[0], "source": mem[1]}

    def unmark(self, out: Location) -> None:
        """Remove an earlier run's checkpoint markers (a decoder partial zip's outputs)."""
        from raymerge.zipit.outputs import unmark

        unmark(out, self.layout.checkpoints)

    def run(self, opts: ExecOptions) -> dict[str, Matching]:
        """Statistics (streaming actors) -> matchings (one task per space, as each is ready);
        first the memory check against the connected cluster's nodes, with the shards each
        actor will hold on this cluster."""
        if self.shards:
            from raymerge.zipit.gather import zip_figures

            n = _Slots.of(len(self.shards), opts).actors
            shape = (int(self.calibration.shape[0]), int(self.calibration.shape[1]))
            per = -(-len(self.shards) // n)
            self.budget = zip_figures(self.cfg, self.layout, self.models, shape, per)
        self.check(connected=True)
        t0 = time.perf_counter()
        p = self.params
        if self.calibration is not None and self.shards:
            matchings, cost = stream_and_match(
                self.layout,
                [(m.location, m.tensors, m.files) for m in self.models],
                self.models[0].config,
                self.calibration,
                self.shards,
                p,
                opts,
                self.budget,
            )
        else:
            refs = {
                s.name: _match_space.remote(
                    None, s, [s.units * s.group] * len(self.models), "identity", 0, 0
                )
                for s in self.layout.spaces
            }
            got = bounded_get(list(refs.values()), opts.stall_timeout, "zipit matching task")
            matchings = {k: r[0] for k, r in zip(refs, got)}
            cost = {"actors": 0, "stats_s": 0.0}
        # features merged into a cluster that already holds one of the same model
        within = sum(
            int(a.numel() - a.unique().numel()) for m in matchings.values() for a in m.assign
        )
        self.info.update(
            arch=self.layout.arch,
            matcher=p["matcher"],
            spaces=len(matchings),
            samples=0 if self.calibration is None else len(self.calibration),
            within_model_merges=within,
            match_s=time.perf_counter() - t0 - cost["stats_s"],
            budget=self.budget.as_json(),
            **cost,
        )
        return matchings


__all__ = [
    "ZipStage",
    "cluster_node_memory",
    "stream_and_match",
    "stream_stats",
]
