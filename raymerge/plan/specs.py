"""Which input tensors feed which output tensor (pure, headers only).

Checks that the models fit together (same names and shapes, every difference listed), then maps
every output tensor to the input tensors it reads: the same name in every model for the
``models`` form; for ``slices``, each output layer to its source layers (frankenmerges); for
ZipIt, the feature-space layout. Also handles tied embeddings (a tied model's lm_head *is* its
embedding matrix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raymerge.config import InputModel, MergeConfig
from raymerge.errors import InputError
from raymerge.io.header import FLOAT_DTYPES, TensorSource
from raymerge.layers import find_stacks, irregular_lists, position
from raymerge.params import uses_gradient
from raymerge.plan.vocab import is_vocab_tensor
from raymerge.zipit.spaces import ZipLayout, ZipTensor, describe


def num_layers(layout: Mapping[str, TensorSource]) -> int:
    """Layers of the checkpoint's one layer stack (0 without a stack; the longest of several)."""
    stacks = find_stacks(layout)
    return max((st.length for st in stacks.values()), default=0)


def problems_error(what: str, problems: list[str]) -> InputError:
    body = "\n".join(f"  - {p}" for p in problems[:30])
    more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
    return InputError(f"{what} ({len(problems)} problems):\n{body}{more}")


def check_compatible(
    refs: Sequence[str], layouts: Sequence[dict[str, TensorSource]], aligned: bool = False
) -> set[str]:
    """Every model must hold the same tensor names with the same shapes; list all differences.

    With ``aligned`` (a tokenizer is configured), vocabulary tensors (embeddings, lm_head:
    :func:`~raymerge.plan.vocab.is_vocab_tensor`) may have any number of rows: their rows follow
    the output vocabulary. Returns their names (empty without ``aligned``).
    """
    problems: list[str] = []
    names0 = set(layouts[0])
    vocab = {n for n in names0 if is_vocab_tensor(n)} if aligned else set()
    for ref, lay in zip(refs[1:], layouts[1:]):
        for n in sorted(names0 - set(lay)):
            problems.append(f"tensor {n!r} is in {refs[0]} but missing in {ref}")
        for n in sorted(set(lay) - names0):
            problems.append(f"tensor {n!r} is in {ref} but missing in {refs[0]}")
        for n in sorted(names0 & set(lay)):
            a, b = layouts[0][n].shape, lay[n].shape
            if a == b or n in vocab:
                continue
            hint = (
                "; if these are vocabularies of different sizes, set tokenizer_source: base "
                "(or a tokenizer: block) so the rows follow one vocabulary, matched by token"
                if len(a) >= 1 and len(a) == len(b) and a[1:] == b[1:]
                else ""
            )
            problems.append(
                f"tensor {n!r}: shape {list(a)} in {refs[0]} but {list(b)} in {ref}{hint}"
            )
    for n in names0:
        dtypes = {lay[n].dtype for lay in layouts if n in lay}
        if dtypes - FLOAT_DTYPES and len(dtypes) > 1:
            problems.append(
                f"tensor {n!r} is not floating point and its dtype differs between models "
                f"({sorted(dtypes)}); it cannot be copied from one of them"
            )
    if problems:
        raise problems_error("the input models are not compatible", problems)
    return vocab


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor: which input tensors feed it (the base first when ``has_base``)."""

    name: str
    reads: tuple[tuple[int, str], ...]
    has_base: bool
    t: float
    group: int  # index into config.groups() for parameter resolution
    zip: ZipTensor | None = None  # zipit: how the tensor's axes move (raymerge.zipit.spaces)
    copy: bool = False  # not floating point: the bytes of reads[0] are written as they are


@dataclass(frozen=True)
class SpecSet:
    """All output tensors, in output order, and what the output's config.json needs."""

    specs: list[TensorSpec]
    num_hidden_layers: int | None  # of the output, when slices set it
    vocab: set[str]  # tensors whose rows follow the output vocabulary (a tokenizer configured)
    layer_map: tuple[tuple[int, int], ...] | None = None  # per output layer: (input, layer)


def reads_of(cfg: MergeConfig, refs: list[str], entries: list[Any], rename) -> tuple:
    """(input index, tensor name) of each tensor an output reads (the base first when the
    method uses one), and whether it has a base."""
    base = cfg.method.uses_base(cfg.base_model)
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
) -> SpecSet:
    """The output tensors (``zl``: the feature-space layout of a zipit/permute merge,
    :func:`zip_layout`)."""
    if zl is not None:
        models = [refs.index(m.model) for m in cfg.models or []]
        specs = [
            TensorSpec(t.name, tuple((models[k], n) for k, n in t.reads), False, 0.0, 0, zip=t)
            for t in zl.tensors
        ]
        return SpecSet(specs, None, set())
    if cfg.models is not None:
        return _models_specs(cfg, refs, layouts, order, configs)
    from raymerge.plan.slices import slice_specs

    return slice_specs(cfg, refs, layouts, order)


def nonfloat_source(cfg: MergeConfig, refs: list[str]) -> int:
    """The input whose non-float tensors (position ids, masks) the output copies: the
    reference (base model, else the first), whose copies every model must match, unless
    ``non_float_tensors: from_base``."""
    return refs.index(cfg.base_model) if cfg.base_model else 0


def _models_specs(cfg, refs, layouts, order, configs) -> SpecSet:
    """The ``models`` form: every output tensor reads the same name in every model; its
    gradient position is its place in its own layer stack (:mod:`raymerge.layers`)."""
    vocab = check_compatible(refs, layouts, aligned=cfg.vocabulary is not None)
    stacks = find_stacks(order)
    odd = irregular_lists(order) if uses_gradient(cfg) else []
    if odd:  # their tensors would all get the gradient's first value
        raise InputError(
            f"{refs[0]}: a gradient parameter is given, but {', '.join(odd[:3])} is numbered "
            "like a layer stack without being 0..n-1 (a pruned or 1-based list), so its "
            "tensors have no layer position; use scalar parameters or filters for them"
        )
    entries = list(cfg.models)
    if cfg.method.uses_base(cfg.base_model):
        entries = [InputModel(model=cfg.base_model)] + [
            e for e in entries if e.model != cfg.base_model
        ]
    keep = nonfloat_source(cfg, refs)
    specs = []
    for name in order:
        t = position(name, stacks)
        if layouts[0][name].dtype not in FLOAT_DTYPES:
            specs.append(TensorSpec(name, ((keep, name),), False, t, 0, copy=True))
            continue
        reads, has_base = reads_of(cfg, refs, entries, lambda e, n=name: n)
        specs.append(TensorSpec(name, reads, has_base, t, 0))
    return SpecSet(specs, None, vocab)


def zip_layout(
    cfg: MergeConfig,
    refs: list[str],
    layouts: Sequence[dict[str, TensorSource]],
    configs: Sequence[dict[str, Any] | None],
) -> ZipLayout:
    """Feature spaces and tensor layouts of a zipit/permute merge (all models alike)."""
    check_compatible(refs, layouts)
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
