"""FP8 detection from headers and config.json: never merge codes as plain tensors."""

from __future__ import annotations

import math

import pytest

from raymerge.errors import InputError
from raymerge.io.header import TensorSource
from raymerge.plan.quant import detect

FP8_CONFIG = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [2, 2]}}


def layout(**tensors):
    out, pos = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * (1 if dtype.startswith("F8") else 4)
        out[name] = TensorSource(name, "model.safetensors", dtype, tuple(shape), pos, pos + n)
        pos += n
    return out


def test_fp8_codes_with_scales_but_no_quantization_config_are_refused():
    lay = layout(**{"w": ("F8_E4M3", (4, 4)), "w_scale_inv": ("F32", (2, 2))})
    with pytest.raises(
        InputError, match=r"fp8 tensors have scale tensors .* no quantization_config"
    ):
        detect("m", {"model_type": "llama"}, lay)
    assert detect("m", FP8_CONFIG, lay).scales["w"].block == (2, 2)
    plain = layout(**{"w": ("F32", (4, 4)), "b": ("F32", (4,))})
    assert detect("m", {}, plain) is None  # not quantised: nothing to refuse


def test_a_per_column_scale_is_not_taken_for_a_per_row_one():
    """A [1, cols] scale of a square weight has as many elements as rows; applied per row it
    would scale the wrong elements."""
    cfg = {"quantization_config": {"quant_method": "fp8"}}
    for shape in [(4,), (4, 1), (1,)]:
        lay = layout(**{"w": ("F8_E4M3", (4, 4)), "w_scale": ("F32", shape)})
        detect("m", cfg, lay)
    lay = layout(**{"w": ("F8_E4M3", (4, 4)), "w_scale": ("F32", (1, 4))})
    with pytest.raises(InputError, match=r"neither per-tensor nor per-row"):
        detect("m", cfg, lay)
