"""Where the planner finds each input tensor's bytes: the input layouts with their quantisation,
LoRA adapters (updates, and weights an adapter replaces) and vocabulary alignment (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raymerge.errors import InputError
from raymerge.io.header import TensorSource, itemsize
from raymerge.plan.chunking import element_source
from raymerge.plan.lora import Adapter
from raymerge.plan.quant import Quantized
from raymerge.plan.records import LoraTarget, LoraUse, RowOrigin, Source, VocabTensor
from raymerge.plan.specs import TensorSpec


@dataclass(frozen=True)
class Inputs:
    """The input layouts (per input reference), each input's quantisation, its adapter (by
    input index), and the aligned vocabulary tensors (by output name)."""

    layouts: Sequence[dict[str, TensorSource]]
    quant: tuple[Quantized | None, ...] = ()
    adapters: Mapping[int, Adapter] = field(default_factory=dict)
    vocab: Mapping[str, VocabTensor] = field(default_factory=dict)

    def stored(self, i: int, name: str) -> tuple[int, TensorSource]:
        """(input to read, tensor) of input ``i``'s tensor ``name``: an adapter's copy where
        the adapter replaces it."""
        ad = self.adapters.get(i)
        if ad is not None and name in ad.replaced:
            return ad.input, ad.replaced[name]
        return i, self.layouts[i][name]

    def lora(self, i: int, name: str) -> LoraTarget | None:
        ad = self.adapters.get(i)
        return ad.targets.get(name) if ad is not None else None

    def quantized(self, spec: TensorSpec, k: int) -> bool:
        i, name = spec.reads[k]
        q = self.quant[i] if i < len(self.quant) else None
        return q is not None and name in q.scales and self.stored(i, name)[0] == i

    def src(self, spec: TensorSpec, k: int = 0) -> TensorSource:
        """Read ``k`` of the output tensor, as stored."""
        i, name = spec.reads[k]
        return self.stored(i, name)[1]

    def shape(self, spec: TensorSpec) -> tuple[int, ...]:
        """The output tensor's shape (a vocabulary tensor's rows follow the vocabulary)."""
        vt = self.vocab.get(spec.name)
        if vt is not None:
            return (vt.rows, *vt.row_shape)
        return self.src(spec).shape

    def in_item(self, spec: TensorSpec, k: int, math_item: int) -> int:
        """Bytes a piece holds per element of read ``k``: the raw bytes, plus a float32 copy
        where it is dequantised or LoRA-updated, plus the aligned copy of a vocabulary tensor."""
        i, name = spec.reads[k]
        extra = 4 if self.quantized(spec, k) or self.lora(i, name) is not None else 0
        aligned = math_item if spec.name in self.vocab else 0
        return itemsize(self.src(spec, k).dtype) + extra + aligned

    def source(self, i: int, name: str, e0: int, e1: int) -> Source:
        """Elements [e0, e1) of input ``i``'s tensor ``name``: bytes, scales, LoRA update."""
        j, t = self.stored(i, name)
        q = self.quant[i] if i < len(self.quant) and j == i else None
        src = element_source(j, t, e0, e1, q.scales.get(name) if q is not None else None)
        target = self.lora(i, name)
        return src if target is None else _with_lora(src, LoraUse(target, e0, e1))

    def origin(self, i: int, name: str) -> RowOrigin:
        """Where input ``i``'s rows of vocabulary tensor ``name`` are."""
        q = self.quant[i] if i < len(self.quant) else None
        if q is not None and name in q.scales:
            raise InputError(
                f"tensor {name!r} is quantised in input {i}; aligning the rows of a quantised "
                "vocabulary tensor is not supported (dequantise the embeddings first)"
            )
        j, t = self.stored(i, name)
        if not t.shape:
            raise InputError(f"tensor {name!r} is a scalar: it has no vocabulary rows to align")
        return RowOrigin(j, t, self.lora(i, name))


def _with_lora(src: Source, use: LoraUse) -> Source:
    return Source(src.input, src.tensor, src.file, src.start, src.end, src.dtype, src.scale, use)


__all__ = ["Inputs"]
