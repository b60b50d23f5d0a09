"""Decoder partial-zip layout, the 'own' axis mode, per-folder shards, and the memory figures."""

from __future__ import annotations

import pytest
import torch

from raymerge.errors import InputError
from raymerge.io.header import parse_header
from raymerge.plan.layout import layout_shards
from raymerge.synth import llama_config, llama_shapes
from raymerge.zipit.apply import zip_tensor
from raymerge.zipit.budget import CalibrationShape, check_budget, space_cost, zip_budget
from raymerge.zipit.matching import Matching
from raymerge.zipit.partial import in_trunk
from raymerge.zipit.spaces import Axis, Space, describe

CFG = llama_config(hidden=8, intermediate=12, layers=3, vocab=16, heads=2, kv_heads=1)


def test_decoder_partial_layout():
    shapes = llama_shapes(CFG)
    full = describe(shapes, CFG, 2)
    zl = describe(shapes, CFG, 2, stop_at=1)
    assert zl.checkpoints == ("model_0", "model_1") and zl.depth == 1 and full.depth == 3
    assert [s.name for s in zl.spaces] == ["res", "attn.0", "mlp.0"]
    by_name = {t.name: t for t in zl.tensors}
    assert len(by_name) == 2 * len(shapes)
    full_axes = {t.name: t for t in full.tensors}
    for j in (0, 1):
        trunk = by_name[f"model_{j}/model.layers.0.mlp.down_proj.weight"]
        assert trunk.reads == ((0, "model.layers.0.mlp.down_proj.weight"),) + (
            (1, "model.layers.0.mlp.down_proj.weight"),
        )
        assert trunk.axes == full_axes["model.layers.0.mlp.down_proj.weight"].axes
        assert by_name[f"model_{j}/model.embed_tokens.weight"].models == (0, 1)
        head = by_name[f"model_{j}/model.layers.1.self_attn.q_proj.weight"]
        assert head.reads == ((j, "model.layers.1.self_attn.q_proj.weight"),)
        assert head.axes == (Axis(1, "res", "unmerge"),) and head.spaces == ("res",)
        assert by_name[f"model_{j}/model.layers.2.mlp.down_proj.weight"].axes == (
            Axis(0, "res", "own"),
        )
        assert by_name[f"model_{j}/model.layers.1.input_layernorm.weight"].axes == (
            Axis(0, "res", "own"),
        )
        assert by_name[f"model_{j}/model.norm.weight"].axes == (Axis(0, "res", "own"),)
        assert by_name[f"model_{j}/lm_head.weight"].axes == (Axis(1, "res", "unmerge"),)
    # the whole depth: every checkpoint is the full zip (lm_head averaged, norm merged)
    whole = describe(shapes, CFG, 2, stop_at=3)
    assert [s.name for s in whole.spaces] == [s.name for s in full.spaces]
    for t in whole.tensors:
        folder, name = t.name.split("/", 1)
        assert t.reads == full_axes[name].reads and t.axes == full_axes[name].axes, t.name
    assert in_trunk("lm_head.weight", 3, 3) and not in_trunk("lm_head.weight", 2, 3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"stop_at must be in \[1, 3\]"):
            describe(shapes, CFG, 2, stop_at=bad)


def test_own_mode_averages_one_models_members():
    # model 0: features 0, 1 -> cluster 0 (a within-model merge), feature 2 -> cluster 1;
    # model 1: 0 -> 1, 1 -> 2, 2 -> 2; cluster 2 has no feature of model 0
    m = Matching(assign=(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])), sizes=[2, 2, 2])
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])  # rows write res features 0..2
    got = zip_tensor([w], [0], [Axis(0, "res", "own")], {"res": m})
    assert torch.equal(got, torch.tensor([[2.0, 3.0], [5.0, 7.0], [0.0, 0.0]]))
    got = zip_tensor([w], [1], [Axis(0, "res", "own")], {"res": m})
    assert torch.equal(got, torch.tensor([[0.0, 0.0], [1.0, 2.0], [4.0, 5.5]]))
    # a reader of model 0: columns of a cluster's members summed (the unmerge folded in)
    r = torch.tensor([[1.0, 10.0, 100.0]])
    got = zip_tensor([r], [0], [Axis(1, "res", "unmerge")], {"res": m})
    assert torch.equal(got, torch.tensor([[11.0, 100.0, 0.0]]))
    with pytest.raises(ValueError, match="one source model"):
        zip_tensor([w, w], [0, 1], [Axis(0, "res", "own")], {"res": m})


def test_shards_per_folder():
    names = ["a/x", "a/y", "b/x", "b/y"]
    shapes = {"a/x": (4,), "a/y": (300,), "b/x": (4,), "b/y": (4,)}
    shards, offsets = layout_shards(names, shapes.__getitem__, lambda n: "F32", 1000, ("a", "b"))
    assert [s.name for s in shards] == [
        "a/model-00001-of-00002.safetensors",
        "a/model-00002-of-00002.safetensors",
        "b/model-00001-of-00001.safetensors",
    ]
    assert [s.index for s in shards] == [0, 1, 2] and shards[2].tensors == ("b/x", "b/y")
    h = parse_header(
        shards[2].header + bytes(shards[2].size - len(shards[2].header)),
        file="s",
        file_size=shards[2].size,
    )
    assert [e.name for e in h.tensors] == ["x", "y"]  # plain names inside the folder
    assert offsets["b/y"] == (2, len(shards[2].header) + 16)
    with pytest.raises(ValueError, match="none of the folders"):
        layout_shards(
            names + ["c/z"], {**shapes, "c/z": (1,)}.__getitem__, lambda n: "F32", 1000, ("a", "b")
        )


def test_space_cost_exact():
    s = space_cost(Space("mlp.0", 48), 2, "zipit")
    # C = U = 96: stats 8 C^2 + 16 C, the correlation 8 C^2, three float32 [U, U] matrices
    assert (s.width, s.units, s.bytes) == (96, 96, 8 * 96**2 + 16 * 96 + 8 * 96**2 + 12 * 96**2)
    heads = space_cost(Space("attn.0", 2, group=8, within=False), 2, "permute")
    # C = 32 features, 4 units; permute: two float64 [n, n] blocks, n = 2
    assert (heads.width, heads.units, heads.bytes) == (32, 4, 16 * 32**2 + 16 * 32 + 16 * 4)
    assert space_cost(Space("res", 8), 2, "identity").bytes == 0


def test_budget_refuses_naming_what_does_not_fit():
    shapes = llama_shapes(CFG)
    from raymerge.io.header import TensorSource

    srcs, pos = {}, 0
    for n, sh in shapes.items():
        size = 2 * int(torch.tensor(sh).prod())
        srcs[n] = TensorSource(n, "f", "BF16", sh, pos, pos + size)
        pos += size
    zl = describe(shapes, CFG, 2)
    cal = CalibrationShape(samples=8, tokens=4, shard_samples=4, batch=2)
    b = zip_budget(zl, srcs, CFG, 2, cal, "zipit")
    layer = sum(s.end - s.start for n, s in srcs.items() if n.startswith("model.layers.0."))
    embed = srcs["model.embed_tokens.weight"].end - srcs["model.embed_tokens.weight"].start
    big = max(layer, embed)
    assert b.parts["weights"] == 2 * 2 * big + big  # float32 copies of K models + one raw
    assert b.parts["activations"] == 2 * 4 * 4 * 8 * 4  # K x shard rows x d x 4 bytes
    assert b.actor_bytes == sum(b.parts.values())
    check_budget(b, b.actor_bytes, "test")  # fits exactly
    with pytest.raises(InputError, match="statistics actor needs"):
        check_budget(b, b.actor_bytes - 1, "test")
    worst = max(b.spaces, key=lambda s: s.bytes)
    with pytest.raises(InputError, match=f"space '{worst.name}'"):
        check_budget(zip_budget(zl, srcs, CFG, 2, None, "zipit"), worst.bytes - 1, "test")


def test_which_node_memory_the_figures_are_checked_against():
    from raymerge.zipit.budget import local_memory, node_memory_for

    assert node_memory_for(5, "ray://x", lambda: 7) == (5, "--node-memory")
    assert node_memory_for(None, "ray://x", lambda: 7)[0] == 7  # connected: the cluster's
    assert node_memory_for(None, "ray://x", None) is None  # a cluster not connected yet
    assert node_memory_for(None, None, None) == (local_memory(), "this machine's memory")
