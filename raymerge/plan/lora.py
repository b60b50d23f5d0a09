"""``model+lora`` inputs: which tensors a PEFT LoRA adapter updates, and by what (pure).

From the adapter's ``adapter_config.json`` and its safetensors header only. An update is
applied in the job that reads the tensor (:mod:`raymerge.lora`), in float32, as PEFT's
``merge_and_unload`` (which mergekit 0.1.5 runs) computes it: ``W + scale * B @ A`` for linear
layers, ``W + scale * (B @ A)^T`` for embeddings (``lora_embedding_A``/``_B``) and fan_in_fan_out
(GPT-2 Conv1D) layers; ``scale = alpha / r``, ``alpha / sqrt(r)`` with ``use_rslora``, with
``rank_pattern``/``alpha_pattern`` matched as PEFT matches them. A piece reads only the rows of
B (or columns of A) its rows need, in blocks of :data:`LORA_BLOCK` rows fixed by the tensor, so a
chunked tensor gets the same numbers as an unchunked one. Weights the adapter stores whole
(``...base_layer.weight``, saved by PEFT for embedding layers) replace the model's, as PEFT loads
them. Anything else PEFT can store (DoRA, bias updates, modules_to_save, trainable tokens,
convolutions, ...) is refused by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raymerge.errors import InputError
from raymerge.io.header import TensorSource, itemsize
from raymerge.plan.records import LoraTarget, LoraUse

PREFIX = "base_model.model."
HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"  # tied: raymerge.plan.specs.TIED
LORA_BLOCK = 64  # rows per LoRA product: fixed per tensor, so chunking never changes it
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA bias updates",
    "target_parameters": "LoRA on parameters",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
    "use_qalora": "QALoRA",
    "use_bdlora": "BD-LoRA",
    "alora_invocation_tokens": "aLoRA",
}
_PARTS = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_embedding_A": "eA",
    ".lora_embedding_B": "eB",
    ".base_layer.weight": "W",
}


@dataclass(frozen=True)
class Adapter:
    """One input's adapter: updates by tensor name, and tensors it replaces (adapter
    tensors, read from input ``input``)."""

    ref: str
    input: int
    targets: Mapping[str, LoraTarget]
    replaced: Mapping[str, TensorSource]


@dataclass(frozen=True)
class AdapterFiles:
    """What the planner gets of an adapter: its reference, its tensors (header) and its
    adapter_config.json."""

    ref: str
    tensors: Mapping[str, TensorSource]
    config: Mapping[str, Any]


def adapter_inputs(
    refs: Sequence[str],
    layouts: Sequence[Mapping[str, TensorSource]],
    adapters: Sequence[AdapterFiles | None],
    untied: Sequence[Mapping[str, TensorSource]] = (),
) -> dict[int, Adapter]:
    """Each ``model+lora`` input's adapter, by input index; the adapters themselves are inputs
    ``len(refs)``, ``len(refs) + 1``, ... in the order given. ``untied``: the layouts where a
    tied model's lm_head reads its embedding: that lm_head gets the embedding's update too (PEFT
    updates the one shared weight)."""
    out = {}
    nxt = len(refs)
    for i, files in enumerate(adapters):
        if files is None:
            continue
        ad = adapter_targets(files.ref, nxt, files.config, files.tensors, layouts[i])
        if untied and HEAD not in layouts[i] and HEAD in untied[i]:  # lm_head = the embedding
            targets, replaced = dict(ad.targets), dict(ad.replaced)
            for table in (targets, replaced):
                if EMBED in table:
                    table[HEAD] = table[EMBED]
            ad = Adapter(ad.ref, ad.input, targets, replaced)
        out[i] = ad
        nxt += 1
    return out


def _pattern(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern matching the end of ``module``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return patterns.get(module, default)


def _check_config(ref: str, conf: Mapping[str, Any]) -> None:
    where = f"{ref}/adapter_config.json"
    if conf.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{where}: peft_type {conf.get('peft_type')!r}; only LoRA adapters apply")
    used = [what for key, what in _UNSUPPORTED.items() if conf.get(key)]
    if conf.get("bias", "none") != "none":
        used.append(f"bias: {conf['bias']!r}")
    if used:
        raise InputError(
            f"{where}: uses {', '.join(used)}, which raymerge does not apply; merge the adapter "
            "with PEFT (merge_and_unload) and give the merged model instead"
        )
    for key in ("r", "lora_alpha"):
        if not isinstance(conf.get(key), (int, float)) or conf[key] <= 0:
            raise InputError(f"{where}: {key!r} must be a positive number, got {conf.get(key)!r}")


def adapter_targets(
    ref: str,
    input_index: int,
    conf: Mapping[str, Any],
    tensors: Mapping[str, TensorSource],
    model: Mapping[str, TensorSource],
) -> Adapter:
    """The updates of one adapter to the tensors of its model.

    Args:
        ref: the adapter reference (for messages).
        input_index: the adapter's input index in the plan.
        conf: its adapter_config.json.
        tensors: its adapter_model.safetensors tensors.
        model: the model's tensors.

    Raises:
        InputError: an adapter raymerge cannot apply, or one for another model.
    """
    _check_config(ref, conf)
    modules: dict[str, dict[str, TensorSource]] = {}
    other = []
    for name, src in tensors.items():
        part = next((p for p in _PARTS if name.endswith(p)), None)
        if part is None or not name.startswith(PREFIX):
            other.append(name)
            continue
        modules.setdefault(name[len(PREFIX) : -len(part)], {})[_PARTS[part]] = src
    if other:
        raise InputError(
            f"{ref}/adapter_model.safetensors: holds tensors that are not LoRA updates "
            f"({sorted(other)[:5]}: modules_to_save or another PEFT feature); raymerge applies "
            "lora_A/lora_B (and lora_embedding_A/B) only"
        )
    transposed = _conv1d(ref, conf, modules, model)
    targets, replaced = {}, {}
    for module, parts in sorted(modules.items()):
        weight = f"{module}.weight"
        if weight not in model:
            raise InputError(
                f"{ref}: updates {weight!r}, which the model does not store (an adapter of "
                "another model, or tied embeddings: raymerge applies LoRA to stored tensors)"
            )
        if "W" in parts:
            if parts["W"].shape != model[weight].shape:
                raise InputError(
                    f"{ref}: its {module}.base_layer.weight is {list(parts['W'].shape)}, the "
                    f"model's {weight} {list(model[weight].shape)} (a resized vocabulary?)"
                )
            replaced[weight] = parts["W"]
        if set(parts) - {"W"}:
            targets[weight] = _target(
                ref, input_index, conf, module, parts, model[weight], transposed
            )
    return Adapter(ref, input_index, targets, replaced)


def _conv1d(ref, conf, modules, model) -> bool:
    """Are the adapted layers Conv1D-style ([in, out] weights, GPT-2), so ``fan_in_fan_out``
    holds? PEFT turns the flag off on ``nn.Linear`` layers, so a square weight's layout follows
    what the adapter's non-square targets show; with none, it cannot be told and is refused."""
    if not conf.get("fan_in_fan_out"):
        return False
    fits = set()
    for module, parts in modules.items():
        a, b, w = parts.get("A"), parts.get("B"), model.get(f"{module}.weight")
        if a is None or b is None or w is None or len(w.shape) != 2 or w.shape[0] == w.shape[1]:
            continue
        if len(a.shape) == 2 and len(b.shape) == 2:
            if tuple(w.shape) == (b.shape[0], a.shape[1]):
                fits.add("rows")
            elif tuple(w.shape) == (a.shape[1], b.shape[0]):
                fits.add("cols")
    if fits == {"cols"}:
        return True
    if fits == {"rows"}:
        return False  # nn.Linear layers: PEFT ignores fan_in_fan_out
    raise InputError(
        f"{ref}: fan_in_fan_out is set but its targets do not show whether the layers are "
        "Conv1D ([in, out] weights, where the flag holds) or nn.Linear (where PEFT ignores "
        "it): "
        + ("they are all square" if not fits else "some fit one layout and some the other")
        + ". Merge the adapter into its model with PEFT first"
    )


def _target(ref, input_index, conf, module, parts, w: TensorSource, transposed: bool) -> LoraTarget:
    """The update of one module's weight; ``transposed``: the layers are Conv1D-style."""
    embedding = "eA" in parts or "eB" in parts
    a, b = (parts.get("eA"), parts.get("eB")) if embedding else (parts.get("A"), parts.get("B"))
    if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2 or len(w.shape) != 2:
        raise InputError(
            f"{ref}: {module}: needs 2-D A and B for a 2-D weight (got A "
            f"{None if a is None else list(a.shape)}, B {None if b is None else list(b.shape)}, "
            f"weight {list(w.shape)}); convolution and partial adapters are not supported"
        )
    r = a.shape[0]
    rows_fit = tuple(w.shape) == (b.shape[0], a.shape[1])
    cols_fit = tuple(w.shape) == (a.shape[1], b.shape[0])
    if b.shape[1] != r or not (rows_fit or cols_fit):
        raise InputError(
            f"{ref}: {module}: A {list(a.shape)} and B {list(b.shape)} do not fit the weight "
            f"{list(w.shape)} (an adapter of another model?)"
        )
    if embedding or (cols_fit and (not rows_fit or transposed)):
        layout = "cols"
    else:
        layout = "rows"
    alpha = _pattern(conf.get("alpha_pattern") or {}, module, conf["lora_alpha"])
    scale = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
    return LoraTarget(input_index, a, b, float(scale), layout)


def lora_rows(use: LoraUse) -> tuple[int, int]:
    """The rows [r0, r1) of the weight whose updates the source needs, widened to whole
    :data:`LORA_BLOCK` blocks."""
    rows, cols = use.target.shape
    r0, r1 = use.elem_start // cols, -(-use.elem_end // cols)
    return r0 // LORA_BLOCK * LORA_BLOCK, min(rows, -(-r1 // LORA_BLOCK) * LORA_BLOCK)


def lora_ranges(use: LoraUse) -> list[tuple[str, int, int]]:
    """The adapter byte ranges a source's update needs: A whole and B's rows ("rows"), or
    A's columns, one range per rank, and B whole ("cols")."""
    t = use.target
    b0, b1 = lora_rows(use)
    if t.layout == "rows":
        row = t.b.shape[1] * itemsize(t.b.dtype)
        return [
            (t.a.file, t.a.start, t.a.end),
            (t.b.file, t.b.start + b0 * row, t.b.start + b1 * row),
        ]
    item, n = itemsize(t.a.dtype), t.a.shape[1]
    cols = [
        (t.a.file, t.a.start + (j * n + b0) * item, t.a.start + (j * n + b1) * item)
        for j in range(t.a.shape[0])
    ]
    return [*cols, (t.b.file, t.b.start, t.b.end)]


__all__ = [
    "LORA_BLOCK",
    "Adapter",
    "AdapterFiles",
    "adapter_inputs",
    "adapter_targets",
    "lora_ranges",
    "lora_rows",
]
