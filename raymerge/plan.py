"""Header-only planning: config + input headers -> output shard layout and per-tensor jobs.

Pure: no Ray, no fsspec, no tensor data. Everything a run will do is fixed here, before any byte
of tensor data is read:

1. every input model has the same tensor names and shapes (all differences are listed);
2. output tensors (in the reference model's order) are assigned to shards of at most
   ``shard_size`` data bytes (Hugging Face's rule), and each shard's header bytes and tensor
   offsets are fixed;
3. each tensor becomes one or more *pieces*: a tensor whose estimated working memory exceeds the
   job memory budget, or whose output exceeds the job size target, is split into row chunks of
   balanced size (flat element ranges if even one row is too big);
4. consecutive pieces of one shard are packed into *jobs*. A job writes one contiguous byte range
   of one shard (the first job of a shard also writes the header), which maps one-to-one onto a
   part of an S3 multipart upload: jobs other than a shard's last are at least
   ``min_part_bytes`` (S3's 5 MiB part minimum).

Jobs and pieces are frozen values: they pickle to Ray, hash, and become manifest rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raymerge.config import DTYPE_NAMES, MergeConfig, resolve_parameters
from raymerge.errors import InputError
from raymerge.io.header import FLOAT_DTYPES, TORCH_TO_ST, build_header, itemsize
from raymerge.io.reader import TensorSource

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_SHARD_SIZE = 5_000_000_000
DEFAULT_JOB_MEMORY = 2 * GiB
DEFAULT_JOB_BYTES = 64 * MiB
MIN_PART_BYTES = 5 * MiB
JOB_OVERHEAD_BYTES = 32 * MiB  # fixed per-job allowance inside the budget (buffers, bookkeeping)


@dataclass(frozen=True)
class Source:
    """Byte range of one piece in one input file (absolute file offsets)."""

    input: int
    file: str
    start: int
    end: int
    dtype: str


@dataclass(frozen=True)
class Piece:
    """One output tensor, or one contiguous chunk of it (flat elements [elem_start, elem_end))."""

    name: str
    chunk: int
    n_chunks: int
    shape: tuple[int, ...]
    piece_shape: tuple[int, ...]
    elem_start: int
    elem_end: int
    out_dtype: str
    out_start: int
    out_end: int
    sources: tuple[Source, ...]
    params: str  # JSON: {"method": {...}, "models": [{...}, ...]}
    memory_bytes: int

    @property
    def nbytes(self) -> int:
        return self.out_end - self.out_start


@dataclass(frozen=True)
class Job:
    """A contiguous byte range [out_start, out_end) of one output shard."""

    id: int
    shard: int
    part: int
    out_start: int
    out_end: int
    pieces: tuple[Piece, ...]
    memory_bytes: int

    @property
    def nbytes(self) -> int:
        return self.out_end - self.out_start

    @property
    def bytes_read(self) -> int:
        return sum(s.end - s.start for p in self.pieces for s in p.sources)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    header: bytes
    size: int
    tensors: tuple[str, ...]


@dataclass
class Plan:
    """The whole run, fixed up front. ``inputs[i]`` is the reference read for Source.input == i."""

    config_hash: str
    method: str
    inputs: list[str]
    base_input: int | None
    merged_inputs: list[int]
    reference_input: int
    shards: list[ShardPlan]
    jobs: list[Job]
    tensor_dtypes: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def pieces(self) -> list[Piece]:
        return [p for j in self.jobs for p in j.pieces]

    def summary(self) -> dict[str, Any]:
        pieces = self.pieces
        chunked = sorted({p.name for p in pieces if p.n_chunks > 1})
        return {
            "method": self.method,
            "config_hash": self.config_hash,
            "inputs": self.inputs,
            "tensors": len({p.name for p in pieces}),
            "pieces": len(pieces),
            "jobs": len(self.jobs),
            "chunked_tensors": len(chunked),
            "bytes_read": sum(j.bytes_read for j in self.jobs),
            "bytes_written": sum(s.size for s in self.shards),
            "output_shards": [
                {"name": s.name, "bytes": s.size, "tensors": len(s.tensors)} for s in self.shards
            ],
            "peak_job_memory_bytes": max((j.memory_bytes for j in self.jobs), default=0),
            "options": self.options,
        }


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def num_layers(layouts: Sequence[dict[str, TensorSource]], config: dict[str, Any] | None) -> int:
    """Layer count for parameter gradients: config.json's num_hidden_layers, else from names."""
    if config and isinstance(config.get("num_hidden_layers"), int):
        return config["num_hidden_layers"]
    from raymerge.config import LAYER_RE

    idx = [int(m.group(1)) for n in layouts[0] if (m := LAYER_RE.search(n))]
    return max(idx) + 1 if idx else 1


def check_compatible(refs: Sequence[str], layouts: Sequence[dict[str, TensorSource]]) -> None:
    """Every model must hold the same tensor names with the same shapes; list all differences."""
    problems: list[str] = []
    names0 = set(layouts[0])
    for ref, lay in zip(refs[1:], layouts[1:]):
        for n in sorted(names0 - set(lay)):
            problems.append(f"tensor {n!r} is in {refs[0]} but missing in {ref}")
        for n in sorted(set(lay) - names0):
            problems.append(f"tensor {n!r} is in {ref} but missing in {refs[0]}")
        for n in sorted(names0 & set(lay)):
            if lay[n].shape != layouts[0][n].shape:
                problems.append(
                    f"tensor {n!r}: shape {list(layouts[0][n].shape)} in {refs[0]} but "
                    f"{list(lay[n].shape)} in {ref}"
                )
    for ref, lay in zip(refs, layouts):
        for n, src in lay.items():
            if src.dtype not in FLOAT_DTYPES:
                problems.append(
                    f"tensor {n!r} in {ref} has dtype {src.dtype}; raymerge merges "
                    "floating-point tensors only"
                )
    if problems:
        body = "\n".join(f"  - {p}" for p in problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise InputError(
            f"the input models are not compatible ({len(problems)} problems):\n{body}{more}"
        )


def make_plan(
    cfg: MergeConfig,
    layouts: Sequence[dict[str, TensorSource]],
    order: Sequence[str],
    *,
    model_config: dict[str, Any] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    job_memory: int = DEFAULT_JOB_MEMORY,
    job_bytes: int = DEFAULT_JOB_BYTES,
    min_part_bytes: int = MIN_PART_BYTES,
) -> Plan:
    """Plan a merge. ``layouts[i]`` belongs to ``cfg.input_refs()[i]``; ``order`` is the
    reference model's tensor order (base model if any, else the first model)."""
    refs = cfg.input_refs()
    method = cfg.method
    if len(layouts) != len(refs):
        raise ValueError("one layout per input reference is required")
    if job_memory <= JOB_OVERHEAD_BYTES:
        raise InputError(f"job memory budget {job_memory} must exceed {JOB_OVERHEAD_BYTES} bytes")
    check_compatible(refs, layouts)

    merged = [refs.index(m.model) for m in cfg.merged_models()]
    base = refs.index(cfg.base_model) if (cfg.base_model and method.base == "required") else None
    reads = ([base] if base is not None else []) + merged
    reference = 0
    math_item = 8 if cfg.dtype and DTYPE_NAMES[cfg.dtype].itemsize == 8 else 4
    L = num_layers(layouts, model_config)

    out_dtypes: dict[str, str] = {}
    for name in order:
        forced = cfg.out_dtype or cfg.dtype
        out_dtypes[name] = (
            TORCH_TO_ST[DTYPE_NAMES[forced]] if forced else layouts[reference][name].dtype
        )

    # 1. shards (Hugging Face rule: start a new shard when the next tensor would overflow it)
    groups: list[list[str]] = [[]]
    filled = 0
    for name in order:
        nbytes = math.prod(layouts[reference][name].shape) * itemsize(out_dtypes[name])
        if groups[-1] and filled + nbytes > shard_size:
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += nbytes
    shards: list[ShardPlan] = []
    offsets: dict[str, tuple[int, int, int]] = {}
    for si, names in enumerate(groups):
        header, laid = build_header(
            [(n, out_dtypes[n], layouts[reference][n].shape) for n in names]
        )
        for e in laid:
            offsets[e.name] = (si, len(header) + e.begin, len(header) + e.end)
        size = len(header) + (laid[-1].end if laid else 0)
        shards.append(ShardPlan(si, shard_name(si, len(groups)), header, size, tuple(names)))

    # 2. pieces
    in_items = [0] * len(refs)
    shard_pieces: list[list[Piece]] = [[] for _ in shards]
    for name in order:
        shape = layouts[reference][name].shape
        si, out_start, _ = offsets[name]
        wide, per_model = resolve_parameters(cfg, name, L)
        params = json.dumps({"method": wide, "models": per_model}, sort_keys=True)
        out_item = itemsize(out_dtypes[name])
        for i in reads:
            in_items[i] = itemsize(layouts[i][name].dtype)
        per_elem = (
            sum(in_items[i] for i in reads)
            + method.work_bytes_per_element * math_item // 4
            + 2 * out_item
        )
        numel = math.prod(shape)
        rows = shape[0] if len(shape) >= 1 else 1
        row_elems = numel // rows if rows else 0
        usable = job_memory - JOB_OVERHEAD_BYTES
        n_chunks = max(
            1,
            math.ceil(numel * per_elem / usable),
            math.ceil(numel * out_item / job_bytes),
        )
        if rows and n_chunks <= rows:
            step_rows = math.ceil(rows / n_chunks)
            bounds = [r * row_elems for r in range(0, rows, step_rows)] + [numel]
        else:  # a single row is too big: flat element ranges
            step = max(1, min(usable // per_elem, job_bytes // out_item))
            bounds = list(range(0, numel, step)) + [numel] if numel else [0, 0]
        n = len(bounds) - 1
        for c in range(n):
            e0, e1 = bounds[c], bounds[c + 1]
            if n == 1:
                pshape = shape
            elif row_elems and e0 % row_elems == 0 and e1 % row_elems == 0:
                pshape = ((e1 - e0) // row_elems, *shape[1:])
            else:
                pshape = (e1 - e0,)
            sources = tuple(
                Source(
                    i,
                    layouts[i][name].file,
                    layouts[i][name].start + e0 * in_items[i],
                    layouts[i][name].start + e1 * in_items[i],
                    layouts[i][name].dtype,
                )
                for i in reads
            )
            shard_pieces[si].append(
                Piece(
                    name=name,
                    chunk=c,
                    n_chunks=n,
                    shape=shape,
                    piece_shape=pshape,
                    elem_start=e0,
                    elem_end=e1,
                    out_dtype=out_dtypes[name],
                    out_start=out_start + e0 * out_item,
                    out_end=out_start + e1 * out_item,
                    sources=sources,
                    params=params,
                    memory_bytes=(e1 - e0) * per_elem,
                )
            )

    # 3. jobs: pack consecutive pieces of a shard; then fold parts below the S3 minimum forward
    jobs: list[Job] = []
    for si, pieces in enumerate(shard_pieces):
        packs: list[list[Piece]] = []
        mem = out = 0
        for p in pieces:
            if (
                packs
                and mem + p.memory_bytes <= job_memory - JOB_OVERHEAD_BYTES
                and out + p.nbytes <= job_bytes
            ):
                packs[-1].append(p)
                mem += p.memory_bytes
                out += p.nbytes
            else:
                packs.append([p])
                mem, out = p.memory_bytes, p.nbytes
        if not packs:
            packs = [[]]
        merged_packs: list[list[Piece]] = []
        carry: list[Piece] = []
        for k, pack in enumerate(packs):
            cur = carry + pack
            size = sum(p.nbytes for p in cur) + (len(shards[si].header) if not merged_packs else 0)
            if size < min_part_bytes and k < len(packs) - 1:
                carry = cur
                continue
            merged_packs.append(cur)
            carry = []
        for part, pack in enumerate(merged_packs, start=1):
            start = 0 if part == 1 else pack[0].out_start
            end = pack[-1].out_end if pack else len(shards[si].header)
            jobs.append(
                Job(
                    id=len(jobs),
                    shard=si,
                    part=part,
                    out_start=start,
                    out_end=end,
                    pieces=tuple(pack),
                    memory_bytes=JOB_OVERHEAD_BYTES + sum(p.memory_bytes for p in pack),
                )
            )
    return Plan(
        config_hash=cfg.hash(),
        method=method.name,
        inputs=list(refs),
        base_input=base,
        merged_inputs=merged,
        reference_input=reference,
        shards=shards,
        jobs=jobs,
        tensor_dtypes=out_dtypes,
        options={
            "shard_size": shard_size,
            "job_memory": job_memory,
            "job_bytes": job_bytes,
            "min_part_bytes": min_part_bytes,
            "num_layers": L,
        },
    )
