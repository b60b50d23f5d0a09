"""The output's ``config.json``: the reference model's, rewritten for what the merge wrote.

Pure (dicts in, dict out; errors are :class:`raymerge.errors.InputError`).

- **dtype**: ``dtype`` (what transformers 5 reads) and ``torch_dtype`` (older versions) both name
  the output tensors' dtype, in every sub-config that has one, so a bf16 merge never loads as
  float32.
- **Dequantised inputs**: ``quantization_config`` is dropped (the output holds plain weights).
- **Frankenmerges** (``layer_map``: per output layer, the input and layer it came from):
  ``num_hidden_layers`` is the new count, and every per-layer setting follows the layers: lists
  with one entry per layer (``layer_types``, ``no_rope_layers``, ...) take each output layer's
  entry from its source model's config; lists of layer indices (``mlp_only_layers``, ...) are
  renumbered; Qwen2-MoE's ``decoder_sparse_step`` becomes an explicit ``mlp_only_layers``. A
  layer-related list or setting whose meaning is not known here is an error naming the key,
  never passed on unchanged (transformers would build the wrong layers, or refuse to load).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from raymerge.errors import InputError
from raymerge.io.header import ST_DTYPES

DTYPE_KEYS = ("dtype", "torch_dtype")
PER_LAYER = {"layer_types", "no_rope_layers", "attention_chunk_size_per_layer", "swa_layers"}
INDEX_LISTS = {"mlp_only_layers", "moe_layers", "full_attention_layers", "global_attn_layers"}
# layer-indexed scalars whose meaning survives a new layer order only in the cases handled
POSITIONAL = {
    "first_k_dense_replace",
    "moe_layer_freq",
    "decoder_sparse_step",
    "interleave_moe_layer_step",
}
HARMLESS = {"max_window_layers", "vision_feature_layer"}


def torch_dtype_name(st: str) -> str:
    """torch's name of a safetensors dtype, e.g. ``"BF16"`` -> ``"bfloat16"``."""
    return ST_DTYPES[st][0]


def _set_dtype(conf: dict[str, Any], name: str) -> None:
    for key in DTYPE_KEYS:
        conf[key] = name
    for sub in conf.values():
        if isinstance(sub, dict) and any(k in sub for k in DTYPE_KEYS):
            _set_dtype(sub, name)


COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")  # GPT-2: n_layer


def _layer_config(conf: dict[str, Any]) -> dict[str, Any]:
    """The (sub-)config that counts the decoder's layers (VLMs: ``text_config``)."""
    if any(k in conf for k in COUNT_KEYS) or not isinstance(conf.get("text_config"), dict):
        return conf
    return conf["text_config"]


def _count_key(conf: Mapping[str, Any]) -> str:
    """The key this config counts its layers under."""
    return next((k for k in COUNT_KEYS if k in conf), "num_hidden_layers")


def _sparse_flags(d: Mapping[str, Any], n: int) -> list[bool] | None:
    """Qwen2-MoE: which of ``n`` layers are sparse (experts), as transformers decides."""
    if "decoder_sparse_step" not in d or not d.get("num_experts"):
        return None
    step, dense = int(d["decoder_sparse_step"]), set(d.get("mlp_only_layers") or [])
    return [i not in dense and (i + 1) % step == 0 for i in range(n)]


def _remap(
    out: dict[str, Any],
    layer_map: Sequence[tuple[int, int]],
    sources: Sequence[Mapping[str, Any] | None],
) -> None:
    """Per-layer settings of ``out`` (the decoder's config) for the layers ``layer_map`` says."""
    count = _count_key(out)
    n_in = int(out.get(count) or 0)
    src = [_layer_config(dict(c)) if c else out for c in sources]

    def value(i: int, key: str) -> Any:
        return src[i].get(key, out.get(key)) if i < len(src) else out.get(key)

    flags = _sparse_flags(out, n_in)
    for key, val in list(out.items()):
        if key in PER_LAYER and isinstance(val, list):
            out[key] = [value(i, key)[layer] for i, layer in layer_map]
        elif key in INDEX_LISTS and isinstance(val, list):
            out[key] = [j for j, (i, layer) in enumerate(layer_map) if layer in set(value(i, key))]
        elif key in POSITIONAL and key != "decoder_sparse_step":
            raise InputError(
                f"config.json: {key!r} places layers by position, which a frankenmerge "
                "reorders; raymerge cannot rewrite it: merge such models with `models:`"
            )
        elif isinstance(val, list) and "layer" in key and key not in HARMLESS:
            raise InputError(
                f"config.json: {key!r} looks like a per-layer setting that raymerge does not "
                "know how to carry through a frankenmerge; refusing rather than writing a "
                "config that builds the wrong layers"
            )
    if flags is not None:  # every layer's kind made explicit, then carried like the others
        kinds = {i: _sparse_flags(src[i], n_in) or flags for i, _ in layer_map}
        out["decoder_sparse_step"] = 1
        out["mlp_only_layers"] = [
            j for j, (i, layer) in enumerate(layer_map) if not kinds[i][layer]
        ]
    out[count] = len(layer_map)


def rewrite(
    conf: Mapping[str, Any],
    *,
    tensor_dtypes: Mapping[str, str],
    layer_map: Sequence[tuple[int, int]] | None = None,
    configs: Sequence[Mapping[str, Any] | None] = (),
    dequantized: bool = False,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """The output's config.json.

    Args:
        conf: the reference model's config.json.
        tensor_dtypes: every output tensor's safetensors dtype.
        layer_map: per output layer of a frankenmerge, (input index, source layer).
        configs: every input's config.json (for the per-layer settings of its layers).
        dequantized: the inputs were quantised; the output holds plain weights.
        vocab_size: the output vocabulary's rows (a tokenizer configured): ``vocab_size``
            (a VLM's ``text_config.vocab_size`` when that is where it is) becomes this.
    """
    out = copy.deepcopy(dict(conf))
    if dequantized:
        out.pop("quantization_config", None)
    float_dtypes = {d for d in tensor_dtypes.values() if d in ("F16", "BF16", "F32", "F64")}
    if len(float_dtypes) == 1:
        _set_dtype(out, torch_dtype_name(float_dtypes.pop()))
    if layer_map is not None:
        _remap(_layer_config(out), layer_map, configs)
    if vocab_size is not None:
        text = out.get("text_config")
        if "vocab_size" not in out and isinstance(text, dict) and "vocab_size" in text:
            text["vocab_size"] = vocab_size
        else:
            out["vocab_size"] = vocab_size
    return out


__all__ = ["DTYPE_KEYS", "rewrite", "torch_dtype_name"]
