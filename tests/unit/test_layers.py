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


def test_numbered_lists_that_are_not_stacks_are_named():
    """A pruned (gaps) or 1-based layer list is no stack, so a gradient would give its tensors
    position 0; they are named so the planner can refuse a gradient over them."""
    from raymerge.layers import irregular_lists

    pruned = [f"model.layers.{i}.mlp.weight" for i in (0, 1, 3, 4)]
    one_based = [f"h.{i}.attn.weight" for i in (1, 2, 3)]
    small = ["visual.merger.mlp.0.weight", "visual.merger.mlp.2.weight"]
    fine = [f"model.layers.{i}.mlp.weight" for i in range(4)]
    got = irregular_lists(pruned + one_based + small)
    assert sorted(got) == ["h.N (indices [1, 2, 3]...)", "model.layers.N (indices [0, 1, 3, 4]...)"]
    assert irregular_lists(small + fine) == []


def test_a_gradient_is_found_wherever_mergekit_allows_one():
    from raymerge.config import load_config
    from raymerge.params import uses_gradient

    def cfg(**params):
        return load_config(
            {
                "merge_method": "slerp",
                "base_model": "/a",
                "models": [{"model": "/a"}, {"model": "/b"}],
                "parameters": params,
            }  # fmt: skip
        )

    assert uses_gradient(cfg(t=[0, 0.5, 1]))
    assert uses_gradient(cfg(t=[{"filter": "mlp", "value": [0, 1]}, {"value": 0.5}]))
    assert not uses_gradient(cfg(t=0.5))
    assert not uses_gradient(cfg(t=[{"filter": "mlp", "value": 0.3}, {"value": 0.5}]))


def test_a_gradient_over_a_pruned_stack_is_refused_before_any_data(tmp_path):
    import torch
    from safetensors.torch import save_file

    from raymerge.config import load_config
    from raymerge.errors import InputError
    from raymerge.options import RunOptions
    from raymerge.pipeline import build_plan

    refs = []
    for k in (0, 1):
        d = tmp_path / f"m{k}"
        d.mkdir()
        w = {f"model.layers.{i}.mlp.weight": torch.full((2, 2), float(k)) for i in (0, 1, 3, 4)}
        save_file(w, str(d / "model.safetensors"))
        refs.append(str(d))
    body = {
        "merge_method": "linear",
        "models": [{"model": r, "parameters": {"weight": [0, 1]}} for r in refs],
    }
    with pytest.raises(InputError, match=r"gradient parameter is given, but model.layers.N"):
        build_plan(load_config(body), RunOptions())
    body["models"] = [{"model": r, "parameters": {"weight": 1}} for r in refs]
    build_plan(load_config(body), RunOptions())  # scalars: no position needed
