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
from dataclasses import dataclass, replace
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
from raymerge.plan.chunking import (
    Footprint,
    chunk_bounds,
    chunk_even,
    footprint,
    make_pieces,
    whole_too_big,
)
from raymerge.plan.inputs import Inputs
from raymerge.plan.layout import layout_shards
from raymerge.plan.lora import AdapterFiles, adapter_inputs
from raymerge.plan.packing import JOB_OVERHEAD_BYTES, pack_jobs
from raymerge.plan.quant import Quantized, detect
from raymerge.plan.records import Job, Piece, Plan, ShardPlan, Source, shard_name
from raymerge.plan.specs import (
    TensorSpec,
    check_compatible,
    num_layers,
    tensor_specs,
    untie,
    zip_layout,
)
from raymerge.plan.vocab import vocab_pieces, vocab_tensor
from raymerge.tokenizer import ModelTokenizer, OutputVocab, config_vocab_size, output_vocabulary


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
        if spec.copy:
            resolved[spec.name] = ResolvedParams({}, ())
            continue
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
    vocab: OutputVocab | None = None,
    adapters: Sequence[AdapterFiles | None] | None = None,
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
        vocab: the output vocabulary (:func:`raymerge.tokenizer.output_vocabulary`); None with
            a tokenizer configured: built from no tokenizer files (rows align by id).
        adapters: per input reference, its LoRA adapter (``model+lora``), if any; adapters
            are inputs ``len(refs)``, ... in this order.

    Returns:
        The whole run, fixed up front.
    """
    refs = cfg.input_refs()
    if len(layouts) != len(refs):
        raise ValueError("one layout per input reference is required")
    _check_sizes(job_memory, job_bytes, shard_size)
    configs = list(model_configs) if model_configs is not None else [None] * len(refs)
    raw = layouts
    layouts, quant = _dequantized(refs, configs, layouts)
    ads = adapter_inputs(refs, raw, adapters or [None] * len(refs), layouts)
    order = [n for n in order if n in layouts[0]]
    zl = zip_layout(cfg, refs, layouts, configs) if cfg.method.calibration else None
    found = tensor_specs(cfg, refs, layouts, order, configs, zl)
    specs, out_layers = found.specs, found.num_hidden_layers
    inputs = _aligned(cfg, vocab, configs, specs, found.vocab, Inputs(layouts, tuple(quant), ads))
    out_dtypes = {s.name: _out_dtype(cfg, s, inputs) for s in specs}
    by_name = {s.name: s for s in specs}

    # 1. shards
    shards, offsets = layout_shards(
        [s.name for s in specs],
        lambda n: inputs.shape(by_name[n]),
        out_dtypes.__getitem__,
        shard_size,
        zl.checkpoints if zl is not None else (),  # a decoder partial zip: one folder per model
    )
    # 2. parameters, then pieces
    resolved = _resolve_all(cfg, specs)
    sizing = _Sizing(job_memory - JOB_OVERHEAD_BYTES, job_bytes, _math_item(cfg))
    shard_pieces = _pieces(cfg, specs, inputs, resolved, out_dtypes, offsets, sizing, len(shards))
    # 3. jobs
    sizes = dict(usable=sizing.usable, job_bytes=job_bytes, min_part_bytes=min_part_bytes)
    jobs = pack_jobs(shards, shard_pieces, **sizes)
    run_hash = hashlib.sha256(f"{cfg.hash()}:{shard_size}".encode()).hexdigest()[:16]
    options = dict(shard_size=shard_size, job_memory=job_memory, job_bytes=job_bytes)
    options["min_part_bytes"] = min_part_bytes
    names = list(refs) + [a.ref for a in adapters or [] if a is not None]
    plan = Plan(run_hash, cfg.method.name, names, out_layers, shards, jobs, out_dtypes, options, zl)
    plan.layer_map = found.layer_map
    plan.dequantized = any(q is not None for q in quant)
    return plan


def _pieces(cfg, specs, inputs, resolved, out_dtypes, offsets, sizing, n_shards):
    """Each shard's pieces; refuses (naming them) tensors a method merges whole that do not
    fit one job."""
    shard_pieces: list[list[Piece]] = [[] for _ in range(n_shards)]
    too_big: list[str] = []
    for spec in specs:
        si, out_start = offsets[spec.name]
        pieces = _tensor_pieces(
            cfg, spec, inputs, resolved[spec.name], out_dtypes[spec.name], out_start, sizing
        )
        problem = whole_too_big(
            cfg.method,
            resolved[spec.name],
            pieces,
            sizing.usable,
            sizing.usable + JOB_OVERHEAD_BYTES,
        )
        if problem:
            too_big.append(problem)
        shard_pieces[si].extend(pieces)
    if too_big:
        raise InputError(_too_big_text(too_big, sizing.usable + JOB_OVERHEAD_BYTES))
    return shard_pieces


def _aligned(cfg, vocab, configs, specs, names: set[str], inputs: Inputs) -> Inputs:
    """``inputs`` with the row mappings of the vocabulary tensors ``names`` (a tokenizer
    configured; without a given vocabulary, one built from no tokenizer files: rows by id)."""
    if cfg.vocabulary is None:
        return inputs
    if vocab is None:
        refs = cfg.input_refs()
        toks = [ModelTokenizer(r, {}, (), config_vocab_size(c)) for r, c in zip(refs, configs)]
        vocab = output_vocabulary(cfg, toks)
    _refuse_unmarked_rows(cfg, vocab, configs, specs, names, inputs)
    item = _math_item(cfg)
    maps = {
        s.name: vocab_tensor(s.name, s.reads, vocab, inputs.origin, item)
        for s in specs
        if s.name in names
    }
    return replace(inputs, vocab=maps)


def _refuse_unmarked_rows(cfg, vocab, configs, specs, names: set[str], inputs: Inputs) -> None:
    """When the vocabulary moves rows, a tensor with one row per token that is not known as a
    vocabulary tensor (an architecture's own head name) would keep the old rows: refused."""
    sizes = {n for n in (config_vocab_size(c) for c in configs) if n}
    if vocab.identity or not sizes:
        return
    same = all(r == tuple(range(len(r))) for r in vocab.rows_of) and sizes == {vocab.rows}
    if same:  # every model's rows stay where they are
        return
    odd = [s.name for s in specs if s.name not in names and (inputs.shape(s) or (0,))[0] in sizes]
    if odd:
        raise InputError(
            "the output vocabulary (tokenizer_source / tokenizer:) moves or adds rows, but "
            f"{odd[:5]} have one row per token and are not tensors raymerge knows as "
            "vocabulary tensors (embeddings, lm_head, ...), so their rows would not follow; "
            "merge without a tokenizer setting, or rename them to the standard names"
        )


def _dequantized(refs, configs, layouts) -> tuple[list[dict], list[Quantized | None]]:
    """The layouts to merge (without scale tensors: they travel with their weights; tied
    models' lm_head read from their embeddings), and each input's quantisation."""
    quant = [detect(r, c, lay) for r, c, lay in zip(refs, configs, layouts)]
    kept = [
        {n: s for n, s in lay.items() if q is None or n not in q.skip}
        for lay, q in zip(layouts, quant)
    ]
    return untie(kept), quant


def _too_big_text(problems: list[str], job_memory: int) -> str:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return (
        f"{len(problems)} tensor(s) do not fit one job's memory budget (--job-memory "
        f"{job_memory} bytes){more}; raise --job-memory or choose a method that chunks:\n"
        + "\n".join(f"  - {p}" for p in problems[:5])
    )


@dataclass(frozen=True)
class _Sizing:
    usable: int  # the job memory budget less the fixed per-job allowance
    job_bytes: int
    math_item: int  # bytes per element of the math dtype


def _out_dtype(cfg: MergeConfig, spec: TensorSpec, inputs: Inputs) -> str:
    """The output dtype: a copied tensor's own; else ``out_dtype``/``dtype``; else the
    input's (bf16 for dequantised fp8 codes)."""
    if spec.copy:
        return inputs.src(spec).dtype
    forced = cfg.out_dtype or cfg.dtype
    if forced:
        return DTYPE_NAMES[forced]
    if any(inputs.quantized(spec, k) for k in range(len(spec.reads))):
        return "BF16"
    return inputs.src(spec).dtype


def _math_item(cfg: MergeConfig) -> int:
    return 8 if cfg.dtype and itemsize(DTYPE_NAMES[cfg.dtype]) == 8 else 4


def _tensor_pieces(
    cfg: MergeConfig,
    spec: TensorSpec,
    inputs: Inputs,
    params: ResolvedParams,
    out_dtype: str,
    out_start: int,
    sizing: _Sizing,
) -> list[Piece]:
    """The pieces of one output tensor (phase 2)."""
    method = cfg.method
    shape = inputs.shape(spec)
    out_item = itemsize(out_dtype)
    in_items = [inputs.in_item(spec, k, sizing.math_item) for k in range(len(spec.reads))]
    vt = inputs.vocab.get(spec.name)
    if spec.copy:
        fp = Footprint(sum(in_items) + out_item, 0)
        n = max(1, -(-math.prod(shape) * out_item // sizing.job_bytes))
        bounds = chunk_even(shape, n)
        rounds = 0
    else:
        n_merged = len(spec.reads) - int(spec.has_base)
        fp = footprint(method, params, shape, in_items, out_item, n_merged, sizing.math_item)
        bounds = chunk_bounds(
            method,
            params,
            shape,
            fp,
            usable=sizing.usable,
            out_item=out_item,
            job_bytes=sizing.job_bytes,
        )
        rounds = len(method.stat_rounds(params.method, params.models))
    pieces = make_pieces(
        spec.name,
        shape,
        bounds,
        lambda e0, e1: (
            tuple(inputs.source(i, name, e0, e1) for i, name in spec.reads) if vt is None else ()
        ),
        out_dtype=out_dtype,
        out_start=out_start,
        has_base=spec.has_base,
        params=params,
        fp=fp,
        rounds=rounds,
        seed=cfg.random_seed,
        copy=spec.copy,
    )
    if vt is not None:
        math_dtype = "F64" if sizing.math_item == 8 else "F32"
        pieces = vocab_pieces(pieces, vt, math_dtype, sizing.math_item)
    return pieces


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
