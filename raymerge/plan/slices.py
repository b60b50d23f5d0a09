"""The ``slices`` form: an output made of layer ranges of the inputs (frankenmerges, per-slice
merges), over the model's one layer stack.

Output layer ``j`` of slice ``k`` reads layer ``layer_range[0] + idx`` of each source, with the
tensors that source layer actually has (layers of one stack may differ: Qwen2-MoE's sparse and
dense layers), renamed to layer ``j``. Tensors outside the stack come from the first slice
(embeddings: "pre") or the last (final norm, lm_head: "post"); one whose name says neither is an
error unless both slices read the same models. Every output layer remembers its source layer,
so config.json's per-layer lists can follow (:mod:`raymerge.model_config`).
"""

from __future__ import annotations

from collections.abc import Sequence

from raymerge.config import MergeConfig
from raymerge.io.header import FLOAT_DTYPES, TensorSource
from raymerge.layers import describe, find_stacks, layer_tensors, outside_role
from raymerge.plan.specs import SpecSet, TensorSpec, problems_error, reads_of
from raymerge.plan.vocab import is_vocab_tensor


def _one_stack(cfg: MergeConfig, refs, layouts):
    """The stack the slices index: the reference model's only one."""
    stacks = find_stacks(layouts[0])
    if len(stacks) != 1:
        raise problems_error(
            "slices need a model with exactly one layer stack",
            [
                f"{refs[0]} has {describe(stacks)}; mergekit's `modules:` syntax (one slice list "
                "per stack) is not supported yet: merge such models with `models:`"
            ],
        )
    return next(iter(stacks.values()))


def _check_ranges(cfg: MergeConfig, refs, layouts, prefix: str) -> None:
    problems = []
    for k, sl in enumerate(cfg.slices or []):
        for i, src in enumerate(sl.sources):
            lay = layouts[refs.index(src.model)]
            stack = find_stacks(lay).get(prefix)
            have = stack.length if stack else 0
            if src.layer_range[1] > have:
                problems.append(
                    f"slices[{k}].sources[{i}].layer_range: {list(src.layer_range)} is out of "
                    f"bounds for {src.model} ({have} layers in {prefix}.N)"
                )
    if problems:
        raise problems_error("invalid layer ranges", problems)


def slice_specs(
    cfg: MergeConfig,
    refs: list[str],
    layouts: Sequence[dict[str, TensorSource]],
    order: Sequence[str],
) -> SpecSet:
    """Output tensors, the output's layer count and, per output layer, (input index, source
    layer) of its slice's first source."""
    slices = cfg.slices or []
    stack = _one_stack(cfg, refs, layouts)
    _check_ranges(cfg, refs, layouts, stack.prefix)
    outside = [n for n in order if not n.startswith(stack.prefix + ".")]
    problems: list[str] = []
    specs: list[TensorSpec] = []

    def add(name: str, k: int, t: float, rename) -> None:
        sources = list(slices[k].sources)
        lead = (refs.index(sources[0].model), rename(sources[0]))
        src = layouts[lead[0]].get(lead[1])
        if src is not None and src.dtype not in FLOAT_DTYPES:  # position ids, masks: copied
            specs.append(TensorSpec(name, (lead,), False, t, k, copy=True))
            return
        reads, has_base = reads_of(cfg, refs, sources, rename)
        specs.append(TensorSpec(name, reads, has_base, t, k))

    first = {s.model for s in slices[0].sources}
    last = {s.model for s in slices[-1].sources}
    for name in outside:
        role = outside_role(name)
        if role is None and first != last:
            problems.append(
                f"tensor {name!r} is outside the layer stack and its name does not say whether "
                "it comes before the layers (embeddings: first slice) or after them (norm, "
                "head: last slice), and those slices read different models"
            )
    for name in (n for n in outside if outside_role(n) == "pre"):
        add(name, 0, 0.0, lambda e, n=name: n)
    layer_map: list[tuple[int, int]] = []
    for k, sl in enumerate(slices):
        n = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        for idx in range(n):
            t = idx / (n - 1) if n > 1 else 1.0
            j = len(layer_map)
            lead = sl.sources[0]
            src_layer = lead.layer_range[0] + idx
            layer_map.append((refs.index(lead.model), src_layer))
            rests = layer_tensors(list(layouts[refs.index(lead.model)]), stack, src_layer)
            for other in sl.sources[1:]:
                theirs = layer_tensors(
                    list(layouts[refs.index(other.model)]), stack, other.layer_range[0] + idx
                )
                if set(theirs) != set(rests):
                    problems.append(
                        f"slices[{k}]: layer {src_layer} of {lead.model} and layer "
                        f"{other.layer_range[0] + idx} of {other.model} hold different tensors "
                        f"({sorted(set(rests) ^ set(theirs))[:3]})"
                    )
            for rest in rests:
                add(
                    f"{stack.prefix}.{j}.{rest}",
                    k,
                    t,
                    lambda e, rest=rest, idx=idx: f"{stack.prefix}.{e.layer_range[0] + idx}.{rest}",
                )
    for name in (n for n in outside if outside_role(n) != "pre"):
        add(name, len(slices) - 1, 0.0, lambda e, n=name: n)
    vocab = {s.name for s in specs if is_vocab_tensor(s.name)} if cfg.vocabulary else set()
    problems += _read_problems(specs, refs, layouts, vocab)
    if problems:
        raise problems_error("the slices do not fit the input models", problems)
    return SpecSet(specs, len(layer_map), vocab, tuple(layer_map))


def _read_problems(specs: Sequence[TensorSpec], refs, layouts, vocab: set[str]) -> list[str]:
    """Every tensor an output reads exists, is a float tensor, and all have one shape (but the
    rows of vocabulary tensors aligned to a tokenizer)."""
    problems: list[str] = []
    for spec in (s for s in specs if not s.copy):
        shapes = set()
        for i, src in spec.reads:
            if src not in layouts[i]:
                problems.append(
                    f"tensor {src!r} (for output {spec.name!r}) is missing in {refs[i]}"
                )
                continue
            shapes.add(layouts[i][src].shape)
            if layouts[i][src].dtype not in FLOAT_DTYPES:
                problems.append(
                    f"tensor {src!r} in {refs[i]} has dtype {layouts[i][src].dtype}; slices "
                    "merge floating-point tensors only"
                )
        if len(shapes) > 1 and spec.name not in vocab:
            problems.append(
                f"output {spec.name!r}: its inputs have different shapes "
                f"{sorted(map(list, shapes))}"
            )
    return problems
