"""LoRA adapters: which tensors they update and by how much (PEFT's rules), refusals by name,
and updates of row ranges equal to the slices of the whole update."""

from __future__ import annotations

import math

import pytest
import torch

from raymerge.errors import InputError
from raymerge.io.header import TensorSource
from raymerge.lora import lora_delta
from raymerge.plan.lora import LORA_BLOCK, adapter_targets, lora_ranges, lora_rows
from raymerge.plan.records import LoraUse

P = "base_model.model."


def ts(name, shape, start=0, dtype="F32"):
    n = math.prod(shape) * 4
    return TensorSource(name, "adapter_model.safetensors", dtype, shape, start, start + n)


MODEL = {
    "q.weight": TensorSource("q.weight", "m.safetensors", "BF16", (8, 6), 0, 96),
    "emb.weight": TensorSource("emb.weight", "m.safetensors", "F32", (10, 6), 96, 336),
    "c.weight": TensorSource("c.weight", "m.safetensors", "F32", (6, 6), 336, 480),
}
ADAPTER = {
    P + "q.lora_A.weight": ts(P + "q.lora_A.weight", (2, 6)),
    P + "q.lora_B.weight": ts(P + "q.lora_B.weight", (8, 2)),
    P + "emb.lora_embedding_A": ts(P + "emb.lora_embedding_A", (2, 10)),
    P + "emb.lora_embedding_B": ts(P + "emb.lora_embedding_B", (6, 2)),
    P + "emb.base_layer.weight": ts(P + "emb.base_layer.weight", (10, 6)),
    P + "c.lora_A.weight": ts(P + "c.lora_A.weight", (2, 6)),
    P + "c.lora_B.weight": ts(P + "c.lora_B.weight", (6, 2)),
}


def test_targets_scales_and_layouts():
    conf = {"r": 2, "lora_alpha": 6, "alpha_pattern": {"c": 4}, "fan_in_fan_out": True}
    ad = adapter_targets("L", 5, conf, ADAPTER, MODEL)
    q, emb, c = ad.targets["q.weight"], ad.targets["emb.weight"], ad.targets["c.weight"]
    assert (q.layout, q.scale, q.shape, q.input) == ("rows", 3.0, (8, 6), 5)  # alpha / r
    assert (emb.layout, emb.shape) == ("cols", (10, 6))  # (B A)^T
    # square: q (8 x 6 fits B A only) shows nn.Linear layers, where PEFT ignores the flag
    assert (c.layout, c.scale) == ("rows", 2.0)  # and alpha_pattern
    assert ad.replaced == {"emb.weight": ADAPTER[P + "emb.base_layer.weight"]}
    rs = adapter_targets(
        "L", 5, {**conf, "use_rslora": True, "fan_in_fan_out": False}, ADAPTER, MODEL
    )
    assert (
        rs.targets["q.weight"].scale == 6 / math.sqrt(2) and rs.targets["c.weight"].layout == "rows"
    )


@pytest.mark.parametrize(
    ("conf", "tensors", "message"),
    [
        ({"use_dora": True}, ADAPTER, "uses DoRA"),
        ({"bias": "all"}, ADAPTER, "bias: 'all'"),
        ({"peft_type": "IA3"}, ADAPTER, "peft_type 'IA3'"),
        ({}, {**ADAPTER, P + "score.weight": ts("s", (2, 2))}, "modules_to_save"),
        ({}, {P + "k.lora_A.weight": ts("a", (2, 6)), P + "k.lora_B.weight": ts("b", (8, 2))},
         "updates 'k.weight', which the model does not store"),
        ({}, {P + "q.lora_A.weight": ts("a", (2, 5)), P + "q.lora_B.weight": ts("b", (8, 2))},
         "do not fit the weight"),
    ],
)  # fmt: skip
def test_what_raymerge_cannot_apply_is_refused_by_name(conf, tensors, message):
    with pytest.raises(InputError, match=message):
        adapter_targets("L", 5, {"r": 2, "lora_alpha": 6, **conf}, tensors, MODEL)


@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_row_ranges_get_the_slices_of_the_whole_update(layout):
    rows, cols, r = 150, 7, 3
    g = torch.Generator().manual_seed(0)
    if layout == "rows":  # W [rows, cols] += B [rows, r] @ A [r, cols]
        a, b = torch.randn(r, cols, generator=g), torch.randn(rows, r, generator=g)
        full = b @ a
    else:  # W [rows, cols] += (B [cols, r] @ A [r, rows])^T
        a, b = torch.randn(r, rows, generator=g), torch.randn(cols, r, generator=g)
        full = (b @ a).T
    a_src = TensorSource("A", "ad", "F32", tuple(a.shape), 0, a.numel() * 4)
    b_src = TensorSource("B", "ad", "F32", tuple(b.shape), 10_000, 10_000 + b.numel() * 4)
    from raymerge.plan.records import LoraTarget

    target = LoraTarget(9, a_src, b_src, 0.5, layout)
    blob = {"A": a.contiguous().view(-1), "B": b.contiguous().view(-1)}

    def read(file, start, end):
        t, base = (blob["A"], 0) if start < 10_000 else (blob["B"], 10_000)
        return t[(start - base) // 4 : (end - base) // 4].numpy().tobytes()

    def delta(e0, e1):
        use = LoraUse(target, e0, e1)
        return lora_delta(use, [read(*rg) for rg in lora_ranges(use)])

    whole = delta(0, rows * cols)
    torch.testing.assert_close(whole.reshape(rows, cols), full * 0.5, atol=1e-6, rtol=0)
    for e0, e1 in [(0, 7), (70, 700), (7 * 63, 7 * 65), (3, 1049)]:
        assert torch.equal(delta(e0, e1), whole[e0:e1]), (e0, e1)
    assert lora_rows(LoraUse(target, 7 * 63, 7 * 65)) == (0, 2 * LORA_BLOCK)


def test_a_tied_models_lm_head_gets_its_embeddings_update():
    """PEFT updates the one weight a tied lm_head shares with the embedding: where the plan reads
    a tied model's lm_head from its embedding, that read gets the embedding's update."""
    from raymerge.plan.lora import AdapterFiles, adapter_inputs
    from raymerge.plan.specs import untie

    emb = TensorSource("model.embed_tokens.weight", "m", "F32", (10, 6), 0, 240)
    ref = {"model.embed_tokens.weight": emb, "lm_head.weight": emb}
    tied = {"model.embed_tokens.weight": emb}
    files = AdapterFiles(
        "L",
        {
            P + "model.embed_tokens.lora_embedding_A": ts("a", (2, 10)),
            P + "model.embed_tokens.lora_embedding_B": ts("b", (6, 2)),
        },
        {"r": 2, "lora_alpha": 2},
    )
    ads = adapter_inputs(["ref", "tied+L"], [ref, tied], [None, files], untie([ref, tied]))
    t = ads[1].targets
    assert t["lm_head.weight"] is t["model.embed_tokens.weight"] and ads[1].input == 2
    alone = adapter_inputs(["tied+L"], [tied], [files], untie([tied]))  # the output is tied too
    assert "lm_head.weight" not in alone[0].targets


def test_fan_in_fan_out_follows_the_layer_kind_the_targets_show():
    """Conv1D ([in, out] weights: a non-square target fits (B A)^T only): square targets are
    transposed too; no non-square target: refused, not guessed."""
    conv = {
        "q.weight": TensorSource("q.weight", "m.safetensors", "F32", (6, 8), 0, 192),
        "c.weight": TensorSource("c.weight", "m.safetensors", "F32", (6, 6), 192, 336),
    }
    adapter = {k: v for k, v in ADAPTER.items() if ".q." in k or ".c." in k}
    conf = {"r": 2, "lora_alpha": 2, "fan_in_fan_out": True}
    ad = adapter_targets("L", 1, conf, adapter, conv)
    assert ad.targets["q.weight"].layout == ad.targets["c.weight"].layout == "cols"
    square = {k: v for k, v in adapter.items() if ".c." in k}
    with pytest.raises(InputError, match=r"fan_in_fan_out is set .* all square"):
        adapter_targets("L", 1, conf, square, conv)
    ad = adapter_targets("L", 1, {**conf, "fan_in_fan_out": False}, square, conv)
    assert ad.targets["c.weight"].layout == "rows"
