"""ZipIt's statistics and matching stage, run on the cluster before the per-tensor jobs.

1. **Statistics**: actors that each load the K models once run calibration shards through them
   and accumulate every feature space (:func:`raymerge.zipit.gather.shard_stats`); a fixed tree
   of reduce tasks sums the shard statistics in shard order, so the result never depends on the
   number of actors or on timing.
2. **Matching**: one task per feature space (they are independent; O(C^3) each for zipit).
3. The matchings (space name -> :class:`raymerge.zipit.matching.Matching`) go to the apply jobs
   through the object store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from raymerge.config import MergeConfig
from raymerge.execution.pool import Pool
from raymerge.io.header import TensorSource
from raymerge.io.reader import ModelLayout
from raymerge.options import ExecOptions
from raymerge.params import resolve_parameters
from raymerge.plan import Plan
from raymerge.redaction import redact
from raymerge.storage import Location, resolve
from raymerge.zipit.spaces import Space, ZipLayout

if TYPE_CHECKING:
    from raymerge.zipit.matching import Matching
    from raymerge.zipit.stats import FeatureStats


@ray.remote
class _ZipStatsActor:
    """Holds the K models (loaded once) and accumulates calibration shards through them."""

    def __init__(self, arch: str, models: list, config: dict | None) -> None:
        from raymerge.zipit.gather import load_tensors

        self.arch, self.config = arch, config
        self.models = [load_tensors(loc, sources) for loc, sources in models]

    def shard(self, x: Any, batches: list, spaces: list[str]) -> dict[str, FeatureStats]:
        from raymerge.zipit.gather import shard_stats

        return shard_stats(self.arch, self.models, self.config, x, batches, spaces)


@ray.remote
def _sum_stats(a: dict[str, FeatureStats], b: dict[str, FeatureStats]) -> dict:
    return {k: a[k] + b[k] for k in a}


def zipit_stats(
    arch: str,
    models: list[tuple[Location, dict[str, TensorSource]]],
    config: dict | None,
    x: Any,
    shards: list[list[tuple[int, int]]],
    spaces: list[str],
    opts: ExecOptions,
) -> tuple[dict[str, FeatureStats], int]:
    """Statistics of every space over all calibration shards; also the number of actors used.
    Actors (one CPU each, at most one per shard and per cluster CPU) take shards round-robin;
    shard results are summed pairwise in a fixed tree, so the sum never depends on timing."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n_actors = max(1, min(len(shards), opts.num_cpus or cpus, cpus))
    pooled = opts.keep_workers > 0 or Pool.adopt(1) is not None
    actors = [
        # idle pooled workers (keep_workers) may hold every CPU: do not wait for them
        _ZipStatsActor.options(num_cpus=0 if pooled else 1).remote(arch, models, config)
        for _ in range(n_actors)
    ]
    try:
        x_ref = ray.put(x)
        level = [
            actors[s % n_actors].shard.remote(x_ref, batches, spaces)
            for s, batches in enumerate(shards)
        ]
        ray.wait(level, num_returns=len(level), fetch_local=False)
        for a in actors:  # free their CPUs for the reduce tasks
            ray.kill(a, no_restart=True)
        actors = []
        while len(level) > 1:
            nxt = [_sum_stats.remote(a, b) for a, b in zip(level[::2], level[1::2])]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        return ray.get(level[0]), n_actors
    finally:
        for a in actors:
            ray.kill(a)


@ray.remote
def _match_space(
    stats: FeatureStats | None, space: Space, sizes: list[int], kind: str, alpha: float, beta: float
) -> Matching:
    from raymerge.zipit.matching import group_similarity, match, match_identity

    units = [n // space.group for n in sizes]
    if kind == "identity" or stats is None:
        return match_identity(units)
    corr = stats.correlation()
    if space.group > 1:
        corr = group_similarity(corr, list(sizes), space.group)
    return match(kind, corr, units, alpha=alpha, beta=beta if space.within else 0.0)


def match_spaces(
    stats: dict[str, FeatureStats],
    spaces: list[Space],
    n_models: int,
    kind: str,
    alpha: float,
    beta: float,
) -> dict[str, Matching]:
    """One matcher task per feature space."""
    refs = {
        s.name: _match_space.remote(
            stats.get(s.name), s, [s.units * s.group] * n_models, kind, alpha, beta
        )
        for s in spaces
    }
    return dict(zip(refs, ray.get(list(refs.values()))))


@dataclass
class ZipStage:
    """The stage for one zipit/permute run: prepared (calibration read and checked) on the
    driver before anything is claimed, run on the cluster before the jobs."""

    cfg: MergeConfig
    layout: ZipLayout
    models: list[ModelLayout]
    calibration: Any  # torch.Tensor of inputs, None for matcher: identity
    params: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(cls, cfg: MergeConfig, plan: Plan, layouts: list[ModelLayout]) -> ZipStage | None:
        zl = plan.zip_layout
        if zl is None:
            return None
        from raymerge.zipit.gather import check_calibration, load_calibration

        refs = cfg.input_refs()
        models = [layouts[refs.index(m.model)] for m in cfg.models or []]
        params = dict(resolve_parameters(cfg, "", 0.0).method)
        x = None
        if params["matcher"] != "identity" and cfg.calibration is not None:
            loc = resolve(cfg.calibration.url, cfg.storage_options)
            x = load_calibration(loc, zl.arch, cfg.calibration.samples)
            shapes = {n: t.shape for n, t in models[0].tensors.items()}
            check_calibration(x, zl.arch, shapes, redact(loc.url))
        return cls(cfg, zl, models, x, params)

    def run(self, opts: ExecOptions) -> dict[str, Matching]:
        """Statistics (actors) -> matchings (one task per space)."""
        from raymerge.zipit.gather import shard_ranges

        t0 = time.perf_counter()
        stats: dict[str, Any] = {}
        actors = 0
        cal = self.cfg.calibration
        if self.calibration is not None and cal is not None:
            shards = [
                s for s in shard_ranges(len(self.calibration), cal.batch_size, cal.shards) if s
            ]
            stats, actors = zipit_stats(
                self.layout.arch,
                [(m.location, m.tensors) for m in self.models],
                self.models[0].config,
                self.calibration,
                shards,
                [s.name for s in self.layout.spaces],
                opts,
            )
        t1 = time.perf_counter()
        p = self.params
        matchings = match_spaces(
            stats, list(self.layout.spaces), len(self.models), p["matcher"], p["alpha"], p["beta"]
        )
        # features merged into a cluster that already holds one of the same model
        within = sum(
            int(a.numel() - a.unique().numel()) for m in matchings.values() for a in m.assign
        )
        self.info = {
            "arch": self.layout.arch,
            "matcher": p["matcher"],
            "spaces": len(matchings),
            "samples": 0 if self.calibration is None else len(self.calibration),
            "actors": actors,
            "within_model_merges": within,
            "stats_s": t1 - t0,
            "match_s": time.perf_counter() - t1,
        }
        return matchings


__all__ = ["ZipStage", "match_spaces", "zipit_stats"]
