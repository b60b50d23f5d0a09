"""Layer-streamed ZipIt statistics: calibration shards through K models one layer at a time.

No Ray here (:mod:`raymerge.execution.zipit_stage` runs a :class:`Streamer` inside each
statistics actor). For stage t the streamer range-reads only that stage's tensors of each model
(:func:`raymerge.io.ranges.fetch`: memory-mapped locally, ranged GETs from S3), advances every
batch's activations through them, accumulates the spaces whose features that stage produces,
then frees the weights. It keeps only the activations of its shards and the running statistics,
so its peak memory is about one layer of K models + its shards' activations + the statistics of
one stage (plus the residual space's, which accumulate down the stack); see
:mod:`raymerge.zipit.budget` for the figure.

Stages: MLP, stage i = ``layers.{i}.*`` (space ``h{i}``); decoder, stage 0 = the embedding (the
residual's first rows), stage 1 + l = layer l (spaces ``attn.{l}``, ``mlp.{l}`` and the
residual after its attention and MLP blocks); the residual space is finished after the last
stage. The statistics of a space are accumulated stage by stage, batch by batch, in shard order:
the same order :func:`raymerge.zipit.gather.shard_stats` (the all-in-memory reference) uses, so
the results are equal bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from raymerge.io.fingerprint import FileFingerprint
from raymerge.io.header import TensorSource
from raymerge.io.ranges import decode, fetch, recheck_local
from raymerge.storage import Location
from raymerge.zipit.forward import LlamaShape, llama_block, llama_embed, mlp_layer
from raymerge.zipit.stages import finished_at, n_stages, stage_tensors
from raymerge.zipit.stats import FeatureStats, features_of_models


def load_stage(
    loc: Location,
    sources: Mapping[str, TensorSource],
    names: Sequence[str],
    device: str = "cpu",
    expect: Mapping[str, FileFingerprint] | None = None,
):
    """Tensors ``names`` of one model (float32 copies on ``device``), read in one batch of
    ranges from the planned file versions ``expect`` (as every job reads); also the bytes read.

    Raises:
        InputChangedError: a file is no longer the version planned."""
    items = [sources[n] for n in names]
    bufs = fetch(loc, [(s.file, s.start, s.end) for s in items], expect)
    out = {
        s.name: decode(b, s.dtype, s.shape).to(device=device, dtype=torch.float32, copy=True)
        for s, b in zip(items, bufs)
    }
    if loc.is_local and expect:  # the mapped pages were read by the copies above
        recheck_local(loc, {s.file for s in items}, expect)
    return out, sum(s.end - s.start for s in items)


@dataclass
class StageInfo:
    """What one stage cost an actor: seconds, bytes read, weight bytes held (float32), and the
    process's memory when the stage's statistics were ready (private ``RssAnon``; the peak
    ``VmHWM`` also counts the object-store pages the actor wrote its results into)."""

    stage: int
    seconds: float
    bytes_read: int
    weight_bytes: int
    rss_private: int = 0
    rss_peak: int = 0


def process_memory() -> tuple[int, int]:
    """(RssAnon, VmHWM) of this process in bytes (Linux; zeros elsewhere)."""
    got = {"RssAnon": 0, "VmHWM": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in got:
                    got[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return got["RssAnon"], got["VmHWM"]


class Streamer:
    """Runs its calibration shards through K models stage by stage (see the module docstring).

    Args:
        arch: "mlp" or "llama".
        models: per model, its location and tensors (headers only), and optionally its files'
            planned fingerprints (reads are then pinned to those versions).
        config: the decoders' config.json.
        spaces: the spaces to accumulate.
        depth: the layers the statistics need (:attr:`raymerge.zipit.spaces.ZipLayout.depth`).
        device: where weights, activations and statistics live ("cuda" on a GPU actor);
            finished statistics are returned on the CPU.
    """

    def __init__(
        self,
        arch: str,
        models: Sequence[tuple[Location, Mapping[str, TensorSource]]],
        config: Mapping[str, Any] | None,
        spaces: Sequence[str],
        depth: int,
        device: str = "cpu",
    ) -> None:
        self.arch, self.models, self.config = arch, list(models), dict(config or {})
        self.device = device
        self.spaces, self.depth = list(spaces), depth
        self.names = list(self.models[0][1])
        self.shards: list[int] = []
        self.inputs: list[list[torch.Tensor]] = []  # per shard, its batches
        self.acts: list[list[list[torch.Tensor]]] = []  # per shard, per model, per batch
        self.res: list[FeatureStats | None] = []  # per shard
        self.next = 0
        self.weights: list[dict[str, torch.Tensor]] | None = None  # only inside step()
        self.rope: dict[int, tuple[torch.Tensor, ...]] = {}

    @property
    def stages(self) -> int:
        return n_stages(self.arch, self.depth)

    def begin(self, x: torch.Tensor, shards: Sequence[tuple[int, Sequence[tuple[int, int]]]]):
        """Take shards ``(index, batches)`` of calibration inputs ``x``."""
        self.shards = [s for s, _ in shards]
        self.inputs = [[x[a:b].to(self.device) for a, b in batches] for _, batches in shards]
        self.acts = [[] for _ in shards]
        self.res = [None for _ in shards]
        self.next = 0

    @torch.no_grad()
    def step(self, stage: int) -> tuple[list[list[FeatureStats]], StageInfo]:
        """Run ``stage``: per shard (in order), the statistics of ``finished_at(stage)``."""
        if stage != self.next:
            raise ValueError(f"stages run in order: expected {self.next}, got {stage}")
        t0 = time.perf_counter()
        names = stage_tensors(self.arch, self.names, stage)
        loaded = [load_stage(*m[:2], names, self.device, *m[2:]) for m in self.models]
        self.weights = [w for w, _ in loaded]
        held = sum(t.numel() * 4 for w in self.weights for t in w.values())
        done = finished_at(self.arch, stage, self.depth, self.spaces)
        out = []
        for si in range(len(self.shards)):
            stats = self._shard_stage(si, stage)
            if "res" in done:
                stats["res"], self.res[si] = self.res[si], None
            out.append([stats[s].cpu() for s in done])
        private, peak = process_memory()  # the weights and this stage's statistics still held
        self.weights = None  # the stage's weights are freed before the next stage reads
        if stage == self.stages - 1:
            self.acts = [[] for _ in self.shards]
        self.next = stage + 1
        read = sum(b for _, b in loaded)
        info = StageInfo(stage, time.perf_counter() - t0, read, held, private, peak)
        return out, info

    def _shard_stage(self, si: int, stage: int) -> dict[str, FeatureStats]:
        """Advance shard ``si``'s activations through ``stage``; accumulate its spaces."""
        assert self.weights is not None
        stats: dict[str, FeatureStats] = {}
        if stage == 0:
            self.acts[si] = [[] for _ in self.models]
        for b, xb in enumerate(self.inputs[si]):
            feats = []
            for k, w in enumerate(self.weights):
                f, act = self._advance(w, stage, self.acts[si][k][b] if stage else xb)
                if stage == 0:
                    self.acts[si][k].append(act)
                else:
                    self.acts[si][k][b] = act
                feats.append(f)
            for space in feats[0]:
                if space not in self.spaces:
                    continue
                parts = [f[space] for f in feats]
                if space == "res":
                    if self.res[si] is None:
                        sizes = [p.shape[1] for p in parts]
                        self.res[si] = FeatureStats.empty(sizes, self.device)
                    self.res[si].update(features_of_models(parts))  # type: ignore[union-attr]
                    continue
                if space not in stats:
                    stats[space] = FeatureStats.empty([p.shape[1] for p in parts], self.device)
                stats[space].update(features_of_models(parts))
        return stats

    def _advance(self, w: Mapping[str, torch.Tensor], stage: int, x: torch.Tensor):
        """One batch of one model through ``stage``: (features by space, new activations)."""
        if self.arch == "mlp":
            if stage == 0:
                x = x.to(w[f"layers.{stage}.weight"].dtype)
            h = mlp_layer(w, stage, x, relu=True)
            return {f"h{stage}": h}, h
        if stage == 0:
            h = llama_embed(w, x)
            return {"res": h.reshape(-1, h.shape[-1])}, h
        shape = LlamaShape.of(self.config)
        seq = x.shape[1]
        if seq not in self.rope:
            self.rope[seq] = tuple(t.to(x.device) for t in shape.rope(seq, x.dtype))
        layer = stage - 1
        x_attn, out, att, inner = llama_block(w, shape, layer, x, self.rope[seq])
        res = torch.cat([x_attn.reshape(-1, shape.d), out.reshape(-1, shape.d)])
        feats = {
            f"attn.{layer}": att.reshape(-1, att.shape[-1]),
            f"mlp.{layer}": inner.reshape(-1, inner.shape[-1]),
            "res": res,
        }
        return feats, out


def stream_stats(
    arch: str,
    models: Sequence[tuple[Location, Mapping[str, TensorSource]]],
    config: Mapping[str, Any] | None,
    x: torch.Tensor,
    batches: Sequence[tuple[int, int]],
    spaces: Sequence[str],
    depth: int,
) -> dict[str, FeatureStats]:
    """The statistics of one calibration shard, layer-streamed (what an actor computes)."""
    s = Streamer(arch, models, config, spaces, depth)
    s.begin(x, [(0, batches)])
    out: dict[str, FeatureStats] = {}
    for stage in range(s.stages):
        per_shard, _ = s.step(stage)
        out.update(zip(finished_at(arch, stage, depth, spaces), per_shard[0]))
    return out


__all__ = ["StageInfo", "Streamer", "stream_stats"]
