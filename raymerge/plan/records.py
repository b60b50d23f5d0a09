"""The plan's frozen records: sources, pieces, jobs, shards and the whole plan.

Pieces and jobs are frozen values: they pickle to Ray, hash, and map one-to-one onto manifest
rows. A job owns one contiguous byte range of one output shard (:meth:`Job.byte_range`), which is
all an output sink ever sees of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from raymerge.io.header import TensorSource
from raymerge.io.sinks.base import ByteRange, ShardSpec
from raymerge.params import ResolvedParams

if TYPE_CHECKING:
    from raymerge.tokenizer import SideFiles
    from raymerge.zipit.spaces import ZipLayout


@dataclass(frozen=True)
class ScaleRange:
    """The scales a quantised piece needs (:mod:`raymerge.plan.quant`): bytes [start, end) of
    the scale tensor, shaped ``shape``. Block scales (``block = (bh, bw)``) hold the piece's
    rows from block row ``start_row // bh``; ``skip_rows`` is how many weight rows of the first
    block precede the piece. ``block=None``: one scale, or one per row of the piece."""

    file: str
    start: int
    end: int
    dtype: str
    shape: tuple[int, ...]
    block: tuple[int, int] | None
    skip_rows: int


@dataclass(frozen=True)
class LoraTarget:
    """A PEFT LoRA update of one input tensor W (2-D): ``W + scale * D``. ``layout="rows"``
    (linear layers): ``D = B @ A``, B ``[rows, r]``, A ``[r, cols]``, so W's rows follow B's;
    ``"cols"`` (embeddings, fan_in_fan_out layers): ``D = (B @ A)^T``, A ``[r, rows]``, B
    ``[cols, r]``, so W's rows follow A's columns. ``input``: the adapter's input index."""

    input: int
    a: TensorSource
    b: TensorSource
    scale: float
    layout: Literal["rows", "cols"]

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of W."""
        if self.layout == "rows":
            return self.b.shape[0], self.a.shape[1]
        return self.a.shape[1], self.b.shape[0]


@dataclass(frozen=True)
class LoraUse:
    """A source's LoRA update: elements [elem_start, elem_end) of the target's tensor."""

    target: LoraTarget
    elem_start: int
    elem_end: int


@dataclass(frozen=True)
class Source:
    """Byte range of one piece in one input file (absolute file offsets); ``scale``: for a
    quantised tensor, where its scales are (the values are codes x scales); ``lora``: the
    LoRA update of these elements (``model+lora`` inputs)."""

    input: int
    tensor: str
    file: str
    start: int
    end: int
    dtype: str
    scale: ScaleRange | None = None
    lora: LoraUse | None = None


@dataclass(frozen=True)
class RowRun:
    """Rows [out, out + n) of an aligned input <- rows [row, row + n) of source ``src``."""

    out: int
    src: int
    row: int
    n: int


@dataclass(frozen=True)
class RowMean:
    """Row ``out`` of an aligned input <- the mean of rows ``terms`` ((source, row) pairs,
    summed in this order): mergekit's default for a token several models hold, base not."""

    out: int
    terms: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SlotRows:
    """One method input of a vocabulary tensor, aligned to the output vocabulary (mergekit's
    PermutedVocabulary for one model): rows from ``runs`` and ``means``, zero elsewhere."""

    runs: tuple[RowRun, ...]
    means: tuple[RowMean, ...]


@dataclass(frozen=True)
class RowOrigin:
    """Where one input's rows of a vocabulary tensor are stored (and their LoRA update)."""

    input: int
    tensor: TensorSource
    lora: LoraTarget | None = None

    @property
    def row_elems(self) -> int:
        return math.prod(self.tensor.shape[1:])


@dataclass(frozen=True)
class VocabTensor:
    """The row mapping of a whole vocabulary tensor: ``slots`` (one per method input, the base
    first when it has one) over rows [0, real), their sources being ``origins``; rows
    [real, rows) are padding, each input's the mean of its aligned rows [0, real), summed in
    blocks of ``block_rows`` (fixed here, so chunked and unchunked runs add the same numbers)."""

    name: str
    real: int
    rows: int
    row_shape: tuple[int, ...]
    block_rows: int
    origins: tuple[RowOrigin, ...]
    slots: tuple[SlotRows, ...]


@dataclass(frozen=True)
class VocabPiece:
    """How a vocabulary piece's method inputs are built from its sources: ``slots`` give rows
    [0, pad) of the piece; rows [pad, rows) are padding rows (``tensor``: the whole tensor's
    mapping, streamed by the job for their mean). ``dtype``: the inputs' dtype (the math's)."""

    rows: int
    row_shape: tuple[int, ...]
    dtype: str
    slots: tuple[SlotRows, ...]
    pad: int
    tensor: VocabTensor | None = None


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
    params: ResolvedParams
    memory_bytes: int  # bytes held for the whole piece (raw inputs, output)
    block_bytes: int  # temporaries of one block (held once per job, blocks run one at a time)
    rounds: int  # whole-tensor statistics rounds the method needs for this tensor
    seed: int
    copy: bool = False  # not floating point: the first source's bytes, as they are
    # a vocabulary tensor's piece: its inputs are rows gathered from the sources (one source
    # per row range; mergekit's tokenizer alignment), not one source per input
    vocab: VocabPiece | None = None

    @property
    def reads_files(self) -> set[tuple[int, str]]:
        """(input, file) of every byte this piece reads: scales, LoRA adapters and the rows
        streamed for padding included."""
        out = {(s.input, s.file) for s in self.sources}
        out |= {(s.input, s.scale.file) for s in self.sources if s.scale is not None}
        loras = [s.lora.target for s in self.sources if s.lora is not None]
        if self.vocab is not None and self.vocab.tensor is not None:
            for o in self.vocab.tensor.origins:
                out.add((o.input, o.tensor.file))
                loras += [o.lora] if o.lora is not None else []
        return out | {(t.input, t.a.file) for t in loras} | {(t.input, t.b.file) for t in loras}

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
        """Bytes its pieces' sources name: the data, scales and LoRA ranges."""
        from raymerge.plan.lora import lora_ranges  # plan.lora builds on these records

        return sum(
            s.end
            - s.start
            + (s.scale.end - s.scale.start if s.scale else 0)
            + (sum(b - a for _, a, b in lora_ranges(s.lora)) if s.lora else 0)
            for p in self.pieces
            for s in p.sources
        )

    @property
    def byte_range(self) -> ByteRange:
        """What the output sink sees of this job."""
        return ByteRange(self.id, self.shard, self.part, self.out_start, self.out_end)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    header: bytes
    size: int
    tensors: tuple[str, ...]


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


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
    # per output layer of a frankenmerge: (input index, source layer), for config.json's lists
    layer_map: tuple[tuple[int, int], ...] | None = None
    dequantized: bool = False  # quantised inputs were dequantised (drop quantization_config)
    # the output's side files (tokenizer, chat template, config.json's vocab size); None: the
    # reference model's, copied
    side: SideFiles | None = None

    @property
    def pieces(self) -> list[Piece]:
        return [p for j in self.jobs for p in j.pieces]

    def shard_specs(self) -> list[ShardSpec]:
        """The output shards as the sinks see them."""
        parts = [0] * len(self.shards)
        for j in self.jobs:
            parts[j.shard] += 1
        return [ShardSpec(s.name, s.size, parts[s.index]) for s in self.shards]

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
