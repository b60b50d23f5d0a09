"""Header-only planning: config + input headers -> output shard layout and per-tensor jobs.

Pure: no Ray, no fsspec, no tensor data. Everything a run will do is fixed here, before any byte
of tensor data is read, in named phases:

0. :mod:`~raymerge.plan.specs`: the models fit together; which input tensors feed each output;
1. :mod:`~raymerge.plan.layout`: output tensors -> shards, headers and offsets;
2. parameters resolved per tensor (:mod:`raymerge.params`; all problems reported at once), then
   :mod:`~raymerge.plan.chunking`: the memory model splits big tensors into row chunks;
3. :mod:`~raymerge.plan.packing`: pieces -> jobs, each one contiguous byte range of one shard.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raymerge.config import DTYPE_NAMES, MergeConfig, groups
from raymerge.errors import ConfigError, InputError
from raymerge.io.header import TensorSource, itemsize
from raymerge.options import (
    DEFAULT_JOB_BYTES,
    DEFAULT_JOB_MEMORY,
    DEFAULT_SHARD_SIZE,
    MIN_PART_BYTES,
)
from raymerge.params import ResolvedParams, resolve_parameters
from raymerge.plan.chunking import chunk_bounds, element_source, footprint, make_pieces
from raymerge.plan.layout import layout_shards
from raymerge.plan.packing import JOB_OVERHEAD_BYTES, pack_jobs
from raymerge.plan.records import Job, Piece, Plan, ShardPlan, Source, shard_name
from raymerge.plan.specs import (
    TensorSpec,
    check_compatible,
    num_layers,
    tensor_specs,
    untie,
    zip_layout,
)


def _check_sizes(job_memory: int, job_bytes: int, shard_size: int) -> None:
    if job_memory <= JOB_OVERHEAD_BYTES:
        raise InputError(f"job memory budget {job_memory} must exceed {JOB_OVERHEAD_BYTES} bytes")
    if job_bytes < 1 or shard_size < 1:
        raise InputError(
            f"--job-bytes ({job_bytes}) and --shard-size ({shard_size}) must be at least 1 byte"
        )


def _resolve_all(cfg: MergeConfig, specs: Sequence[TensorSpec]) -> dict[str, ResolvedParams]:
    """Every tensor's parameters; every problem of every tensor reported at once."""
    grps = groups(cfg)
    problems: dict[str, list[str]] = {}
    resolved: dict[str, ResolvedParams] = {}
    for spec in specs:
        _, entries, slice_params = grps[spec.group]
        params = resolve_parameters(cfg, spec.name, spec.t, entries, slice_params)
        if spec.zip is not None:
            params = ResolvedParams({**params.method, "layout": spec.zip}, params.models)
        resolved[spec.name] = params
        for problem in cfg.method.check(params.method, params.models):
            problems.setdefault(problem, []).append(spec.name)
    if problems:
        raise ConfigError(
            [
                f"{p} (tensors {names[:3]}{' ...' if len(names) > 3 else ''})"
                for p, names in problems.items()
            ]
        )
    return resolved


def make_plan(
    cfg: MergeConfig,
    layouts: Sequence[dict[str, TensorSource]],
    order: Sequence[str],
    *,
    model_configs: Sequence[dict[str, Any] | None] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    job_memory: int = DEFAULT_JOB_MEMORY,
    job_bytes: int = DEFAULT_JOB_BYTES,
    min_part_bytes: int = MIN_PART_BYTES,
) -> Plan:
    """Plan a merge.

    Args:
        cfg: the validated config.
        layouts: per input reference (``cfg.input_refs()[i]``), its tensors by name.
        order: the reference model's tensor order (the base model if any, else the first).
        model_configs: each input's config.json, if any.
        shard_size: most data bytes per output shard.
        job_memory: the memory budget of one job.
        job_bytes: the output bytes per job (and S3 part) to aim for.
        min_part_bytes: the smallest job but a shard's last (S3's part minimum; 0 locally).

    Returns:
        The whole run, fixed up front.
    """
    refs = cfg.input_refs()
    if len(layouts) != len(refs):
        raise ValueError("one layout per input reference is required")
    _check_sizes(job_memory, job_bytes, shard_size)
    configs = list(model_configs) if model_configs is not None else [None] * len(refs)
    layouts = untie(layouts)
    zl = zip_layout(cfg, refs, layouts, configs) if cfg.method.calibration else None
    specs, out_layers, vocab = tensor_specs(cfg, refs, layouts, order, configs, zl)
    inputs = _Inputs(layouts, vocab)
    forced = cfg.out_dtype or cfg.dtype
    out_dtypes = {s.name: DTYPE_NAMES[forced] if forced else inputs.src(s).dtype for s in specs}
    by_name = {s.name: s for s in specs}

    # 1. shards
    shards, offsets = layout_shards(
        [s.name for s in specs],
        lambda n: inputs.src(by_name[n]).shape,
        out_dtypes.__getitem__,
        shard_size,
        zl.checkpoints if zl is not None else (),  # a decoder partial zip: one folder per model
    )
    # 2. parameters, then pieces
    resolved = _resolve_all(cfg, specs)
    sizing = _Sizing(job_memory - JOB_OVERHEAD_BYTES, job_bytes, _math_item(cfg))
    shard_pieces: list[list[Piece]] = [[] for _ in shards]
    for spec in specs:
        si, out_start = offsets[spec.name]
        shard_pieces[si].extend(
            _tensor_pieces(
                cfg, spec, inputs, resolved[spec.name], out_dtypes[spec.name], out_start, sizing
            )
        )
    # 3. jobs
    jobs = pack_jobs(
        shards,
        shard_pieces,
        usable=sizing.usable,
        job_bytes=job_bytes,
        min_part_bytes=min_part_bytes,
    )
    run_hash = hashlib.sha256(f"{cfg.hash()}:{shard_size}".encode()).hexdigest()[:16]
    options = dict(
        shard_size=shard_size,
        job_memory=job_memory,
        job_bytes=job_bytes,
        min_part_bytes=min_part_bytes,
    )
    return Plan(
        run_hash, cfg.method.name, list(refs), out_layers, shards, jobs, out_dtypes, options, zl
    )


@dataclass(frozen=True)
class _Inputs:
    """The input layouts, and the tensors whose rows follow the base vocabulary."""

    layouts: Sequence[dict[str, TensorSource]]
    vocab: set[str]

    def src(self, spec: TensorSpec, k: int = 0) -> TensorSource:
        """Read ``k`` of the output tensor (for a vocabulary tensor, read 0 is the base's)."""
        if spec.name in self.vocab and k == 0:
            return self.layouts[0][spec.name]  # the base model's shape and dtype
        i, name = spec.reads[k]
        return self.layouts[i][name]


@dataclass(frozen=True)
class _Sizing:
    usable: int  # the job memory budget less the fixed per-job allowance
    job_bytes: int
    math_item: int  # bytes per element of the math dtype


def _math_item(cfg: MergeConfig) -> int:
    return 8 if cfg.dtype and itemsize(DTYPE_NAMES[cfg.dtype]) == 8 else 4


def _tensor_pieces(
    cfg: MergeConfig,
    spec: TensorSpec,
    inputs: _Inputs,
    params: ResolvedParams,
    out_dtype: str,
    out_start: int,
    sizing: _Sizing,
) -> list[Piece]:
    """The pieces of one output tensor (phase 2)."""
    method = cfg.method
    shape = inputs.src(spec).shape
    out_item = itemsize(out_dtype)
    fp = footprint(
        method,
        params,
        shape,
        [itemsize(inputs.src(spec, k).dtype) for k in range(len(spec.reads))],
        out_item,
        len(spec.reads) - int(spec.has_base),
        sizing.math_item,
    )
    bounds = chunk_bounds(
        method,
        params,
        shape,
        fp,
        usable=sizing.usable,
        out_item=out_item,
        job_bytes=sizing.job_bytes,
    )
    if spec.name in inputs.vocab:  # split where a model's vocabulary ends: base rows follow
        row = math.prod(shape[1:])
        cuts = {inputs.layouts[i][nm].shape[0] * row for i, nm in spec.reads}
        bounds = sorted(set(bounds) | {c for c in cuts if 0 < c < bounds[-1]})
    return make_pieces(
        spec.name,
        shape,
        bounds,
        lambda e0, e1: tuple(
            element_source(i, name, inputs.layouts, e0, e1) for i, name in spec.reads
        ),
        out_dtype=out_dtype,
        out_start=out_start,
        has_base=spec.has_base,
        params=params,
        fp=fp,
        rounds=len(method.stat_rounds(params.method, params.models)),
        seed=cfg.random_seed,
    )


__all__ = [
    "JOB_OVERHEAD_BYTES",
    "Job",
    "Piece",
    "Plan",
    "ShardPlan",
    "Source",
    "check_compatible",
    "make_plan",
    "num_layers",
    "shard_name",
]
