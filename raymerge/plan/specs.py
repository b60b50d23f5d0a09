"""Which input tensors feed which output tensor (pure, headers only).

Checks that the models fit together (same names and shapes, every difference listed), then maps
every output tensor to the input tensors it reads: the same name in every model for the
``models`` form; for ``slices``, each output layer to its source layers (frankenmerges); for
ZipIt, the feature-space layout. Also handles tied embeddings (a tied model's lm_head *is* its
embedding matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raymerge.config import InputModel, MergeConfig
from raymerge.errors import InputError
from raymerge.io.header import FLOAT_DTYPES, TensorSource
from raymerge.params import LAYER_RE, layer_position
from raymerge.zipit.spaces import ZipLayout, ZipTensor, describe


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
    zip: ZipTensor | None = None  # zipit: how the tensor's axes move (raymerge.zipit.spaces)


def _reads(cfg: MergeConfig, refs: list[str], entries: list[Any], rename) -> tuple:
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
) -> tuple[list[TensorSpec], int | None, set[str]]:
    """Output tensors in output order, the output layer count when slices set it, and the
    tensors whose rows follow the base vocabulary (``tokenizer_source: base``). ``zl``: the
    feature-space layout of a zipit/permute merge (:func:`zip_layout`)."""
    if zl is not None:
        models = [refs.index(m.model) for m in cfg.models or []]
        return (
            [
                TensorSpec(t.name, tuple((models[k], n) for k, n in t.reads), False, 0.0, 0, zip=t)
                for t in zl.tensors
            ],
            None,
            set(),
        )
    if cfg.models is not None:
        return _models_specs(cfg, refs, layouts, order, configs)
    return _slice_specs(cfg, refs, layouts, order, configs)


def _models_specs(cfg, refs, layouts, order, configs) -> tuple[list[TensorSpec], None, set[str]]:
    """The ``models`` form: every output tensor reads the same name in every model."""
    from_base = cfg.tokenizer_source == "base" and bool(cfg.base_model)
    vocab = check_compatible(refs, layouts, vocab_from_base=from_base)
    L = num_layers(layouts[0], configs[0])
    entries = list(cfg.models)
    if cfg.method.uses_base(cfg.base_model):
        entries = [InputModel(model=cfg.base_model)] + [
            e for e in entries if e.model != cfg.base_model
        ]
    specs = []
    for name in order:
        reads, has_base = _reads(cfg, refs, entries, lambda e, n=name: n)
        specs.append(TensorSpec(name, reads, has_base, layer_position(name, L), 0))
    return specs, None, vocab


def _slice_specs(cfg, refs, layouts, order, configs) -> tuple[list[TensorSpec], int, set[str]]:
    """The ``slices`` form: output layers from the slices' source layers, in order; tensors
    outside the layers from the first slice (embeddings) or the last (norm, lm_head)."""
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
    _check_reads(specs, refs, layouts)
    return specs, out_layer, set()


def _check_reads(specs: Sequence[TensorSpec], refs, layouts) -> None:
    """Every tensor an output reads exists, is a float tensor, and all have one shape."""
    problems: list[str] = []
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
