"""Quantised inputs: which tensors are stored as codes plus scales, and how to dequantise them.

Averaging FP8 codes and their scales separately is wrong whenever the scales differ (a
re-quantised fine-tune): a tensor's real values are ``codes * scale``. So a quantised weight is
read together with its scale, dequantised in the job (:func:`raymerge.worker.dequantize`), merged
in fp32 like any other tensor and written in ``out_dtype`` (bf16 by default); the scale tensors
are not written and ``quantization_config`` is dropped from config.json.

Supported: ``quantization_config.quant_method: fp8`` (``float8_e4m3fn``/``e5m2`` weights) with
DeepSeek-V3-style block scales ``<name>_scale_inv`` of shape ``[ceil(out/bh), ceil(in/bw)]``
(``weight_block_size: [bh, bw]``; despite ``_inv`` the weight is ``codes * scale``), or
per-tensor / per-row ``<name>_scale``. Activation scales (``input_scale``) are dropped. Every other
``quant_method`` (gptq, awq, mxfp4, bitsandbytes, compressed-tensors, ...) is refused at plan
time: dequantise those checkpoints with their own tooling first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raymerge.errors import InputError
from raymerge.io.header import TensorSource

FP8 = {"F8_E4M3", "F8_E5M2"}
SCALE_SUFFIXES = ("_scale_inv", "_scale")
DROPPED_SUFFIXES = (".input_scale", ".activation_scale", ".k_scale", ".v_scale")


@dataclass(frozen=True)
class ScaleOf:
    """How one quantised tensor's codes turn into values: its scale tensor and block shape
    (``block=None``: a per-tensor or per-row scale, broadcast)."""

    scale: TensorSource
    block: tuple[int, int] | None


@dataclass(frozen=True)
class Quantized:
    """One model's quantised tensors (by weight name) and the tensors not to merge at all."""

    method: str
    scales: Mapping[str, ScaleOf]
    skip: frozenset[str]


def _block(qc: Mapping[str, Any]) -> tuple[int, int] | None:
    b = qc.get("weight_block_size")
    if b is None:
        return None
    if not (isinstance(b, list) and len(b) == 2 and all(isinstance(x, int) and x > 0 for x in b)):
        raise InputError(f"quantization_config.weight_block_size {b!r} is not [rows, cols]")
    return b[0], b[1]


def detect(
    ref: str, config: Mapping[str, Any] | None, layout: Mapping[str, TensorSource]
) -> Quantized | None:
    """The quantisation of one input model, from its config.json and headers; None if it is
    not quantised. Refuses formats raymerge cannot dequantise, naming the format."""
    qc = (config or {}).get("quantization_config")
    if not qc:
        scaled = sorted(
            n for n, src in layout.items()
            if src.dtype in FP8 and any(n + s in layout for s in SCALE_SUFFIXES)
        )  # fmt: skip
        if scaled:  # codes with scales: merging them as plain tensors would average codes
            raise InputError(
                f"{ref}: {len(scaled)} fp8 tensors have scale tensors (e.g. {scaled[0]!r} and "
                f"its scale) but config.json has no quantization_config, so how to dequantise "
                "them is unknown; add the checkpoint's quantization_config (quant_method fp8, "
                "weight_block_size) to its config.json"
            )
        return None
    method = str(qc.get("quant_method", "?")) if isinstance(qc, Mapping) else "?"
    if method != "fp8":
        raise InputError(
            f"{ref}: config.json says the weights are quantised with {method!r}; raymerge "
            "dequantises fp8 checkpoints only (never averaging codes). Dequantise this model to "
            "bf16/fp16 with its own tooling (e.g. transformers' dequantize, or the quantiser's "
            "export) and merge that"
        )
    block = _block(qc)
    scales: dict[str, ScaleOf] = {}
    skip = {n for n in layout if n.endswith(DROPPED_SUFFIXES)}
    problems = []
    for name, src in layout.items():
        if src.dtype not in FP8:
            continue
        found = next((name + s for s in SCALE_SUFFIXES if name + s in layout), None)
        if found is None:
            problems.append(f"{name} ({src.dtype}) has no {name}_scale_inv / _scale tensor")
            continue
        scale = layout[found]
        skip.add(found)
        scales[name] = ScaleOf(scale, block if found.endswith("_scale_inv") else None)
        problems += _check_shapes(name, src, scale, scales[name].block)
    if problems:
        raise InputError(
            f"{ref}: fp8 checkpoint with missing or odd scales: " + "; ".join(problems[:10])
        )
    return Quantized(method, scales, frozenset(skip))


def _check_shapes(name: str, w: TensorSource, s: TensorSource, block) -> list[str]:
    if block is not None:
        if len(w.shape) != 2:
            return [f"{name}: block scales need a 2-D weight, got {list(w.shape)}"]
        want = (math.ceil(w.shape[0] / block[0]), math.ceil(w.shape[1] / block[1]))
        if tuple(s.shape) != want:
            return [f"{name}: scale shape {list(s.shape)}, blocks {list(block)} need {list(want)}"]
        return []
    per_tensor = math.prod(s.shape) == 1
    per_row = len(w.shape) >= 1 and tuple(s.shape) in ((w.shape[0],), (w.shape[0], 1))
    if not per_tensor and not per_row:  # e.g. [1, cols]: per column, which is not per row
        return [f"{name}: scale shape {list(s.shape)} is neither per-tensor nor per-row"]
    return []


__all__ = ["FP8", "Quantized", "ScaleOf", "detect"]
