"""Layer stacks of real architectures' tensor names (raymerge.layers)."""

from __future__ import annotations

import pytest

from raymerge.layers import Stack, find_stacks, layer_tensors, locate, outside_role, position

GPT2 = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"] + [
    f"transformer.h.{i}.{p}" for i in range(3) for p in ("attn.c_attn.weight", "mlp.c_fc.bias")
]
T5 = ["shared.weight", "lm_head.weight", "encoder.final_layer_norm.weight"] + [
    f"{side}.block.{i}.layer.{j}.x.weight" for side in ("encoder", "decoder") for i in range(2)
    for j in range(2)
]  # fmt: skip
MOE = [f"model.layers.0.mlp.experts.{e}.w1.weight" for e in range(4)] + [
    "model.layers.1.mlp.gate_proj.weight"
]


def test_stacks_wherever_they_are_each_with_its_own_length():
    assert find_stacks(GPT2) == {"transformer.h": Stack("transformer.h", 3)}
    assert find_stacks(T5) == {"encoder.block": Stack("encoder.block", 2),
                               "decoder.block": Stack("decoder.block", 2)}  # fmt: skip
    assert find_stacks(MOE) == {"model.layers": Stack("model.layers", 2)}  # experts: nested
    assert find_stacks([f"bert.encoder.layer.{i}.output.dense.weight" for i in range(12)]) == {
        "bert.encoder.layer": Stack("bert.encoder.layer", 12)
    }
    vlm = ["model.vision_tower.vision_model.encoder.layers.0.fc1.weight",
           "model.language_model.layers.0.mlp.up_proj.weight",
           "model.language_model.layers.1.mlp.up_proj.weight"]  # fmt: skip
    assert {s.length for s in find_stacks(vlm).values()} == {1, 2}
    # an nn.Sequential with an activation at index 1 is not a layer stack
    assert find_stacks(["visual.merger.mlp.0.weight", "visual.merger.mlp.2.weight"]) == {}


def test_gradient_position_within_each_stack_and_zero_outside():
    stacks = find_stacks(GPT2)
    assert position("transformer.h.0.mlp.c_fc.bias", stacks) == 0.0
    assert position("transformer.h.2.mlp.c_fc.bias", stacks) == 1.0  # the last layer: t = 1
    assert position("transformer.h.1.mlp.c_fc.bias", stacks) == 0.5
    assert position("transformer.ln_f.weight", stacks) == 0.0  # as mergekit 0.1.5
    t5 = find_stacks(T5)
    assert position("decoder.block.1.layer.0.x.weight", t5) == 1.0
    assert locate("encoder.block.1.layer.1.x.weight", t5).rest == "layer.1.x.weight"


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("model.embed_tokens.weight", "pre"), ("transformer.wte.weight", "pre"),
        ("transformer.wpe.weight", "pre"), ("shared.weight", "pre"),
        ("bert.embeddings.LayerNorm.weight", "pre"), ("model.norm.weight", "post"),
        ("transformer.ln_f.weight", "post"), ("lm_head.weight", "post"),
        ("encoder.final_layer_norm.weight", "post"), ("cls.predictions.bias", "post"),
        ("bert.pooler.dense.weight", "post"), ("something.else", None),
    ],
)  # fmt: skip
def test_tensors_outside_the_stack_are_before_or_after_it(name, role):
    assert outside_role(name) == role


def test_a_layer_lists_its_own_tensors():
    stack = find_stacks(MOE)["model.layers"]
    assert layer_tensors(MOE, stack, 1) == ["mlp.gate_proj.weight"]
    assert len(layer_tensors(MOE, stack, 0)) == 4
