"""Layer stacks of any architecture, from tensor names (pure: names in, stacks out).

A *stack* is a numbered module list: every tensor named ``<prefix>.<i>.<rest>`` with the first
integer component ``i`` belongs to stack ``<prefix>``, layer ``i``: ``model.layers.N`` (Llama,
Mistral, Qwen, Gemma, Mixtral), ``transformer.h.N`` (GPT-2, Falcon, Bloom), ``bert.encoder.layer.N``
(BERT), ``encoder.block.N`` and ``decoder.block.N`` (T5: two stacks), ``vision_tower....layers.N``
(VLMs). Numbers nested inside a layer (``mlp.experts.7``, T5's ``layer.1``) are not stacks of
their own. A numbered list whose indices are not 0..n-1 (``visual.merger.mlp.{0,2}``, an
``nn.Sequential`` with an activation between) is not a layer stack.

A tensor's gradient position is ``t = i / (L_stack - 1)`` within its own stack (1 for a
one-layer stack); tensors outside every stack (embeddings, final norm, lm_head) get t = 0, as
mergekit 0.1.5 gives them. For frankenmerges, tensors outside the stack are *pre* (embeddings:
from the first slice) or *post* (final norm, lm_head: from the last slice), by name
(:func:`outside_role`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_NUMBERED = re.compile(r"^(?P<prefix>.+?)\.(?P<idx>\d+)\.(?P<rest>.+)$")
_PRE = re.compile(
    r"(embed|\bwte\b|\bwpe\b|^shared\.|tok_embeddings|word_embeddings|position_embeddings|"
    r"token_type_embeddings|\bembeddings\.)"
)
_POST = re.compile(
    r"(^|\.)(norm|ln_f|final_layer_norm|final_layernorm|lm_head|output|pooler|score|head)\b|"
    r"^cls\.|\.cls\."
)


@dataclass(frozen=True)
class Stack:
    """A numbered module list: layers ``prefix.0 .. prefix.{length-1}``."""

    prefix: str
    length: int


@dataclass(frozen=True)
class Place:
    """Where a tensor sits: its stack, its layer, the rest of its name."""

    stack: Stack
    index: int
    rest: str

    @property
    def t(self) -> float:
        n = self.stack.length
        return self.index / (n - 1) if n > 1 else 1.0


def find_stacks(names: Iterable[str]) -> dict[str, Stack]:
    """The layer stacks of a checkpoint, by prefix."""
    found: dict[str, set[int]] = {}
    for name in names:
        m = _NUMBERED.match(name)
        if m:
            found.setdefault(m["prefix"], set()).add(int(m["idx"]))
    return {
        prefix: Stack(prefix, len(idx))
        for prefix, idx in found.items()
        if idx == set(range(len(idx)))
    }


def irregular_lists(names: Iterable[str]) -> list[str]:
    """Numbered lists that look like layer stacks but are not taken as one, so every tensor in
    them would sit outside every stack (gradient position 0): indices from 1, or with gaps
    (pruned layers), reaching 3 or more. Small lists such as ``visual.merger.mlp.{0, 2}`` (an
    ``nn.Sequential`` with an activation between) are not."""
    found: dict[str, set[int]] = {}
    for name in names:
        m = _NUMBERED.match(name)
        if m:
            found.setdefault(m["prefix"], set()).add(int(m["idx"]))
    return [
        f"{prefix}.N (indices {sorted(idx)[:4]}...)"
        for prefix, idx in sorted(found.items())
        if idx != set(range(len(idx))) and max(idx) >= 3
    ]


def locate(name: str, stacks: dict[str, Stack]) -> Place | None:
    """The stack and layer of tensor ``name``, or None for a tensor outside every stack."""
    m = _NUMBERED.match(name)
    if m is None or m["prefix"] not in stacks:
        return None
    return Place(stacks[m["prefix"]], int(m["idx"]), m["rest"])


def position(name: str, stacks: dict[str, Stack]) -> float:
    """mergekit's gradient position of a tensor: t within its stack, 0 outside every stack."""
    place = locate(name, stacks)
    return 0.0 if place is None else place.t


def outside_role(name: str) -> str | None:
    """For a tensor outside every stack: "pre" (before the layers: embeddings), "post"
    (after them: final norm, lm_head, classifier heads), or None when its name says neither."""
    if _PRE.search(name):
        return "pre"
    if _POST.search(name):
        return "post"
    return None


def layer_tensors(names: Sequence[str], stack: Stack, index: int) -> list[str]:
    """The ``rest`` of every tensor of layer ``index`` of ``stack``, in ``names`` order."""
    prefix = f"{stack.prefix}.{index}."
    return [n[len(prefix) :] for n in names if n.startswith(prefix)]


def describe(stacks: dict[str, Stack]) -> str:
    return ", ".join(f"{s.prefix}.N ({s.length} layers)" for s in stacks.values()) or "none"


__all__ = [
    "Place",
    "Stack",
    "describe",
    "find_stacks",
    "irregular_lists",
    "layer_tensors",
    "locate",
    "outside_role",
]
