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

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raymerge.config import (
    DTYPE_NAMES,
    LAYER_RE,
    InputModel,
    MergeConfig,
    groups,
    layer_position,
    resolve_parameters,
)
from raymerge.errors import ConfigError, InputError
from raymerge.io.header import FLOAT_DTYPES, TensorSource, build_header, itemsize
from raymerge.methods import BLOCK_ELEMENTS
from raymerge.methods.base import stat_unit
from raymerge.zipit.spaces import ZipLayout, describe

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_SHARD_SIZE = 5_000_000_000
# Budget for a job's data. The worker process itself (Python, torch, Ray) adds ~0.35 GB, so the
# default keeps a worker's peak RSS under 2 GiB (measured: benchmarks/big_tensor.py).
DEFAULT_JOB_MEMORY = 1 * GiB
DEFAULT_JOB_BYTES = 64 * MiB
MIN_PART_BYTES = 5 * MiB
JOB_OVERHEAD_BYTES = 32 * MiB  # fixed per-job allowance inside the budget (buffers, bookkeeping)


@dataclass(frozen=True)
class Source:
    """Byte range of one piece in one input file (absolute file offsets)."""

    input: int
    tensor: str
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
    sources: tuple[Source, ...]  # the base first when ``has_base``, then the merged models
    has_base: bool
    params: str  # JSON: {"method": {...}, "models": [{...}, ...]}
    memory_bytes: int  # bytes held for the whole piece (raw inputs, output)
    block_bytes: int  # temporaries of one block (held once per job, blocks run one at a time)
    rounds: int  # whole-tensor statistics rounds the method needs for this tensor
    seed: int

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
    inputs: list[str]  # the first is the reference: base_model if any, else the first model
    num_hidden_layers: int | None  # of the output, when slices change it
    shards: list[ShardPlan]
    jobs: list[Job]
    tensor_dtypes: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    zip_layout: ZipLayout | None = None  # zipit/permute: feature spaces for the statistics stage

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


def num_layers(layout: dict[str, TensorSource], config: dict[str, Any] | None) -> int:
    """Layer count: config.json's num_hidden_layers, else 1 + the largest layer index in names."""
    if config and isinstance(config.get("num_hidden_layers"), int):
        return config["num_hidden_layers"]
    idx = [int(m.group(1)) for n in layout if (m := LAYER_RE.search(n))]
    return max(idx) + 1 if idx else 0


def _problems_error(what: str, problems: list[str]) -> InputError:
    body = "\n".join(f"  - {p}" for p in problems[:30])
    more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
    return InputError(f"{what} ({len(problems)} problems):\n{body}{more}")


def check_compatible(
    refs: Sequence[str], layouts: Sequence[dict[str, TensorSource]], vocab_from_base: bool = False
) -> set[str]:
    """Every model must hold the same tensor names with the same shapes; list all differences.

    With ``vocab_from_base`` (``tokenizer_source: base``; ``layouts[0]`` is the base), tensors
    that differ only in their number of rows (embeddings, lm_head of models with other vocab
    sizes) are allowed; their names are returned.
    """
    problems: list[str] = []
    vocab: set[str] = set()
    names0 = set(layouts[0])
    for ref, lay in zip(refs[1:], layouts[1:]):
        for n in sorted(names0 - set(lay)):
            problems.append(f"tensor {n!r} is in {refs[0]} but missing in {ref}")
        for n in sorted(set(lay) - names0):
            problems.append(f"tensor {n!r} is in {ref} but missing in {refs[0]}")
        for n in sorted(names0 & set(lay)):
            a, b = layouts[0][n].shape, lay[n].shape
            if a == b:
                continue
            if vocab_from_base and len(a) >= 2 and len(a) == len(b) and a[1:] == b[1:]:
                vocab.add(n)
                continue
            hint = (
                "; if these are vocabularies of different sizes, set tokenizer_source: base "
                "(rows follow the base model)"
                if len(a) >= 2 and len(a) == len(b) and a[1:] == b[1:]
                else ""
            )
            problems.append(
                f"tensor {n!r}: shape {list(a)} in {refs[0]} but {list(b)} in {ref}{hint}"
            )
    for ref, lay in zip(refs, layouts):
        for n, src in lay.items():
            if src.dtype not in FLOAT_DTYPES:
                problems.append(
                    f"tensor {n!r} in {ref} has dtype {src.dtype}; raymerge merges "
                    "floating-point tensors only"
                )
    if problems:
        raise _problems_error("the input models are not compatible", problems)
    return vocab


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor: which input tensors feed it (the base first when ``has_base``)."""

    name: str
    reads: tuple[tuple[int, str], ...]
    has_base: bool
    t: float
    group: int  # index into config.groups() for parameter resolution
    layout: str = ""  # JSON; zipit: how the tensor's axes move (raymerge.zipit.spaces)


def _reads(cfg: MergeConfig, refs: list[str], entries: list[Any], rename) -> tuple:
    base = cfg.method.base == "required"
    picked = (
        [e for e in entries if e.model == cfg.base_model][:1] if base else []
    ) + cfg.merged_of(entries)
    return tuple((refs.index(e.model), rename(e)) for e in picked), base


def tensor_specs(
    cfg: MergeConfig,
    refs: list[str],
    layouts: Sequence[dict[str, TensorSource]],
    order: Sequence[str],
    configs: Sequence[dict[str, Any] | None],
    zl: ZipLayout | None = None,
) -> tuple[list[TensorSpec], int | None, set[str]]:
    """Output tensors in output order, the output layer count when slices set it, and the
    tensors whose rows follow the base vocabulary (``tokenizer_source: base``). ``zl``: the
    feature-space layout of a zipit/permute merge (:func:`zip_layout`)."""
    if zl is not None:
        models = [refs.index(m.model) for m in cfg.models or []]
        return (
            [
                TensorSpec(
                    t.name,
                    tuple((models[k], n) for k, n in t.reads),
                    False,
                    0.0,
                    0,
                    json.dumps(t.layout(), sort_keys=True),
                )
                for t in zl.tensors
            ],
            None,
            set(),
        )
    if cfg.models is not None:
        from_base = cfg.tokenizer_source == "base" and bool(cfg.base_model)
        vocab = check_compatible(refs, layouts, vocab_from_base=from_base)
        L = num_layers(layouts[0], configs[0])
        entries = list(cfg.models)
        if cfg.base_model and cfg.method.base == "required":
            entries = [InputModel(model=cfg.base_model)] + [
                e for e in entries if e.model != cfg.base_model
            ]
        specs = []
        for name in order:
            reads, has_base = _reads(cfg, refs, entries, lambda e, n=name: n)
            specs.append(TensorSpec(name, reads, has_base, layer_position(name, L), 0))
        return specs, None, vocab

    slices = cfg.slices or []
    templates = list(
        dict.fromkeys(LAYER_RE.sub(".layers.{}.", n, count=1) for n in order if LAYER_RE.search(n))
    )
    templates = [t if not t.startswith(".") else t[1:] for t in templates]
    plain = [n for n in order if not LAYER_RE.search(n)]
    pre = [n for n in plain if "embed" in n]
    post = [n for n in plain if "embed" not in n]
    problems: list[str] = []
    for k, sl in enumerate(slices):
        for i, src in enumerate(sl.sources):
            idx = refs.index(src.model)
            have = num_layers(layouts[idx], configs[idx])
            if src.layer_range[1] > have:
                problems.append(
                    f"slices[{k}].sources[{i}].layer_range: {list(src.layer_range)} is out of "
                    f"bounds for {src.model} ({have} layers)"
                )
    if problems:
        raise _problems_error("invalid layer ranges", problems)
    specs: list[TensorSpec] = []

    def add(name: str, k: int, t: float, rename) -> None:
        reads, has_base = _reads(cfg, refs, list(slices[k].sources), rename)
        specs.append(TensorSpec(name, reads, has_base, t, k))

    for name in pre:
        add(name, 0, 0.0, lambda e, n=name: n)
    out_layer = 0
    for k, sl in enumerate(slices):
        n = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        for idx in range(n):
            t = idx / (n - 1) if n > 1 else 1.0
            for tpl in templates:
                add(
                    tpl.format(out_layer),
                    k,
                    t,
                    lambda e, tpl=tpl, idx=idx: tpl.format(e.layer_range[0] + idx),
                )
            out_layer += 1
    for name in post:
        add(name, len(slices) - 1, 0.0, lambda e, n=name: n)
    for spec in specs:
        shapes = set()
        for i, src in spec.reads:
            if src not in layouts[i]:
                problems.append(
                    f"tensor {src!r} (for output {spec.name!r}) is missing in {refs[i]}"
                )
            else:
                shapes.add(layouts[i][src].shape)
                if layouts[i][src].dtype not in FLOAT_DTYPES:
                    problems.append(
                        f"tensor {src!r} in {refs[i]} has dtype {layouts[i][src].dtype}; "
                        "raymerge merges floating-point tensors only"
                    )
        if len(shapes) > 1:
            problems.append(
                f"output {spec.name!r}: its inputs have different shapes "
                f"{sorted(map(list, shapes))}"
            )
    if problems:
        raise _problems_error("the slices do not fit the input models", problems)
    return specs, out_layer, set()


def zip_layout(
    cfg: MergeConfig,
    refs: list[str],
    layouts: Sequence[dict[str, TensorSource]],
    configs: Sequence[dict[str, Any] | None],
) -> ZipLayout:
    """Feature spaces and tensor layouts of a zipit/permute merge (all models alike)."""
    check_compatible(refs, layouts, vocab_from_base=False)
    first = refs.index((cfg.models or [])[0].model)
    shapes = {n: src.shape for n, src in layouts[first].items()}
    try:
        return describe(
            shapes, configs[first], len(cfg.models or []), (cfg.parameters or {}).get("stop_at")
        )
    except (ValueError, KeyError) as exc:
        raise InputError(f"{cfg.merge_method}: {exc}") from None


TIED = ("lm_head.weight", "model.embed_tokens.weight")


def untie(layouts: Sequence[dict[str, TensorSource]]) -> list[dict[str, TensorSource]]:
    """Models with tied embeddings store no lm_head. When the reference model (``layouts[0]``)
    has one, a tied model's lm_head *is* its embedding matrix: read those bytes for it."""
    head, embed = TIED
    if head not in layouts[0]:
        return list(layouts)
    out = []
    for lay in layouts:
        if head not in lay and embed in lay:
            e = lay[embed]
            lay = {**lay, head: TensorSource(head, e.file, e.dtype, e.shape, e.start, e.end)}
        out.append(lay)
    return out


def _elems(src: TensorSource) -> int:
    return math.prod(src.shape)


def _source(
    i: int, name: str, layouts: Sequence[dict[str, TensorSource]], e0: int, e1: int, own: bool
) -> Source:
    """Elements [e0, e1) of input ``i``'s tensor, or, past the end of its vocabulary (``own``
    false; tokenizer_source: base), of the base model's (input 0)."""
    j = i if own else 0
    src = layouts[j][name]
    item = itemsize(src.dtype)
    return Source(j, name, src.file, src.start + e0 * item, src.start + e1 * item, src.dtype)


def _bounds(numel: int, unit: int, n_chunks: int) -> list[int]:
    units = max(1, math.ceil(numel / unit)) if numel else 1
    n = max(1, min(n_chunks, units))
    per = math.ceil(units / n)
    bounds = list(range(0, numel, per * unit)) if numel else [0]
    return bounds + [numel]


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
    """Plan a merge. ``layouts[i]`` belongs to ``cfg.input_refs()[i]``; ``order`` is the
    reference model's tensor order (base model if any, else the first model)."""
    refs = cfg.input_refs()
    method = cfg.method
    if len(layouts) != len(refs):
        raise ValueError("one layout per input reference is required")
    if job_memory <= JOB_OVERHEAD_BYTES:
        raise InputError(f"job memory budget {job_memory} must exceed {JOB_OVERHEAD_BYTES} bytes")
    if job_bytes < 1 or shard_size < 1:
        raise InputError(
            f"--job-bytes ({job_bytes}) and --shard-size ({shard_size}) must be at least 1 byte"
        )
    configs = list(model_configs) if model_configs is not None else [None] * len(refs)
    layouts = untie(layouts)
    zl = zip_layout(cfg, refs, layouts, configs) if method.calibration else None
    specs, out_layers, vocab = tensor_specs(cfg, refs, layouts, order, configs, zl)
    grps = groups(cfg)
    math_item = 8 if cfg.dtype and itemsize(DTYPE_NAMES[cfg.dtype]) == 8 else 4
    forced = cfg.out_dtype or cfg.dtype

    def src(spec: TensorSpec, k: int = 0) -> TensorSource:
        if spec.name in vocab and k == 0:
            return layouts[0][spec.name]  # the base model's shape and dtype
        i, name = spec.reads[k]
        return layouts[i][name]

    out_dtypes = {s.name: DTYPE_NAMES[forced] if forced else src(s).dtype for s in specs}

    # 1. shards (Hugging Face rule: start a new shard when the next tensor would overflow it)
    groups_: list[list[TensorSpec]] = [[]]
    filled = 0
    for spec in specs:
        nbytes = math.prod(src(spec).shape) * itemsize(out_dtypes[spec.name])
        if groups_[-1] and filled + nbytes > shard_size:
            groups_.append([])
            filled = 0
        groups_[-1].append(spec)
        filled += nbytes
    shards: list[ShardPlan] = []
    offsets: dict[str, tuple[int, int]] = {}
    for si, members in enumerate(groups_):
        header, laid = build_header([(s.name, out_dtypes[s.name], src(s).shape) for s in members])
        for e in laid:
            offsets[e.name] = (si, len(header) + e.begin)
        size = len(header) + (laid[-1].end if laid else 0)
        shards.append(
            ShardPlan(
                si, shard_name(si, len(groups_)), header, size, tuple(s.name for s in members)
            )
        )

    # 2. pieces (after checking every tensor's resolved parameters, all problems at once)
    problems: dict[str, list[str]] = {}
    resolved = {}
    for spec in specs:
        _, entries, slice_params = grps[spec.group]
        wide, per_model = resolve_parameters(cfg, spec.name, spec.t, entries, slice_params)
        resolved[spec.name] = (wide, per_model)
        for problem in method.check(wide, per_model):
            problems.setdefault(problem, []).append(spec.name)
    if problems:
        raise ConfigError(
            [
                f"{p} (tensors {names[:3]}{' ...' if len(names) > 3 else ''})"
                for p, names in problems.items()
            ]
        )
    usable = job_memory - JOB_OVERHEAD_BYTES
    shard_pieces: list[list[Piece]] = [[] for _ in shards]
    for spec in specs:
        shape = src(spec).shape
        si, out_start = offsets[spec.name]
        wide, per_model = resolved[spec.name]
        if spec.layout:
            wide = {**wide, "layout": json.loads(spec.layout)}
        params = json.dumps({"method": wide, "models": per_model}, sort_keys=True)
        rounds = len(method.stat_rounds(wide, per_model))
        row_local = method.row_local(wide)
        out_item = itemsize(out_dtypes[spec.name])
        in_items = [itemsize(src(spec, k).dtype) for k in range(len(spec.reads))]
        n_merged = len(spec.reads) - int(spec.has_base)
        # Kernels run block by block (raymerge.methods.BLOCK_ELEMENTS): per element a job holds
        # the raw inputs and the output bytes; math-dtype copies and temporaries exist for one
        # block at a time. Row-local methods on rank <= 1 tensors take the whole tensor as a block.
        temp_per_elem = len(in_items) * math_item + method.work_bytes(n_merged) * math_item // 4
        whole_block = (row_local and len(shape) < 2) or method.whole
        per_elem = sum(in_items) + out_item + (temp_per_elem if whole_block else 0)
        block_temp = 0 if whole_block else temp_per_elem
        # the largest piece that fits: raw+output for all its elements, temporaries for one block
        max_elems = max(
            (usable - BLOCK_ELEMENTS * block_temp) // per_elem,
            min(BLOCK_ELEMENTS, usable // (per_elem + block_temp)),
            1,
        )
        numel = math.prod(shape)
        unit = stat_unit(shape)
        row = math.prod(shape[1:]) if len(shape) >= 2 else 0
        n_chunks = math.ceil(numel / max_elems) if numel else 1
        if not rounds:  # elementwise: also split for parallelism / upload part size
            n_chunks = max(n_chunks, math.ceil(numel * out_item / job_bytes))
        if (row_local and (len(shape) < 2 or unit != row)) or method.whole:
            n_chunks = 1  # rows must stay whole, and a rank <= 1 tensor is one row
        bounds = _bounds(numel, unit, n_chunks)
        if spec.name in vocab:  # split where a model's vocabulary ends: base rows follow
            cuts = {layouts[i][nm].shape[0] * row for i, nm in spec.reads}
            bounds = sorted(set(bounds) | {c for c in cuts if 0 < c < numel})
        n = len(bounds) - 1
        for c in range(n):
            e0, e1 = bounds[c], bounds[c + 1]
            if n == 1:
                pshape = shape
            elif row and unit == row:
                pshape = ((e1 - e0) // row, *shape[1:])
            else:
                pshape = (e1 - e0,)
            sources = tuple(
                _source(i, name, layouts, e0, e1, e1 <= _elems(layouts[i][name]))
                for i, name in spec.reads
            )
            shard_pieces[si].append(
                Piece(
                    name=spec.name,
                    chunk=c,
                    n_chunks=n,
                    shape=shape,
                    piece_shape=pshape,
                    elem_start=e0,
                    elem_end=e1,
                    out_dtype=out_dtypes[spec.name],
                    out_start=out_start + e0 * out_item,
                    out_end=out_start + e1 * out_item,
                    sources=sources,
                    has_base=spec.has_base,
                    params=params,
                    memory_bytes=(e1 - e0) * per_elem,
                    block_bytes=min(BLOCK_ELEMENTS, e1 - e0) * block_temp,
                    rounds=rounds,
                    seed=cfg.random_seed,
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
                and mem + p.memory_bytes + p.block_bytes <= usable
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
                    memory_bytes=JOB_OVERHEAD_BYTES
                    + sum(p.memory_bytes for p in pack)
                    + max((p.block_bytes for p in pack), default=0),
                )
            )
    run_hash = hashlib.sha256(f"{cfg.hash()}:{shard_size}".encode()).hexdigest()[:16]
    return Plan(
        config_hash=run_hash,
        method=method.name,
        inputs=list(refs),
        num_hidden_layers=out_layers,
        shards=shards,
        jobs=jobs,
        tensor_dtypes=out_dtypes,
        options={
            "shard_size": shard_size,
            "job_memory": job_memory,
            "job_bytes": job_bytes,
            "min_part_bytes": min_part_bytes,
        },
        zip_layout=zl,
    )
