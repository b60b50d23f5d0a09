"""Planner: header-only, exact layout, chunking bounds, big fabricated checkpoints."""

from __future__ import annotations

import json
import struct
import time

import pytest

from raymerge.config import load_config
from raymerge.errors import InputError
from raymerge.io.header import TensorSource, build_header, itemsize, parse_header
from raymerge.options import GiB, MiB, RunOptions
from raymerge.pipeline import build_plan
from raymerge.plan import make_plan
from tests.fabricate import fabricate_checkpoint, llama3_70b_config


def layout(
    shapes: dict[str, tuple[int, ...]], dtype: str = "BF16", file: str = "model.safetensors"
):
    header, laid = build_header([(n, dtype, s) for n, s in shapes.items()])
    return {
        e.name: TensorSource(
            e.name, file, dtype, e.shape, len(header) + e.begin, len(header) + e.end
        )
        for e in laid
    }


def cfg3(method="linear", **extra):
    models = [{"model": m, "parameters": {"weight": 1.0}} for m in ("a", "b", "c")]
    d = {"merge_method": method, "models": models, **extra}
    if method == "task_arithmetic":
        d = {"merge_method": method, "base_model": "a", "models": models[1:], **extra}
    return load_config(d)


def check_tiling(plan):
    """Jobs tile each shard exactly; pieces tile tensors; headers parse to the planned offsets."""
    for s in plan.shards:
        jobs = [j for j in plan.jobs if j.shard == s.index]
        assert [j.part for j in jobs] == list(range(1, len(jobs) + 1))
        assert jobs[0].out_start == 0 and jobs[-1].out_end == s.size
        for a, b in zip(jobs, jobs[1:]):
            assert a.out_end == b.out_start
        h = parse_header(s.header, file=s.name, file_size=s.size)
        starts = {e.name: h.data_start + e.begin for e in h.tensors}
        for j in jobs:
            pos = j.out_start + (len(s.header) if j.part == 1 else 0)
            for p in j.pieces:
                assert p.out_start == pos
                pos = p.out_end
                if p.chunk == 0:
                    assert p.out_start == starts[p.name]
            assert pos == j.out_end


def test_chunked_embedding_stays_under_2gib():
    shapes = {"model.embed_tokens.weight": (128256, 8192), "model.norm.weight": (8192,)}
    lay = layout(shapes)
    plan = make_plan(cfg3(), [lay, lay, lay], list(shapes))
    emb = [p for p in plan.pieces if p.name == "model.embed_tokens.weight"]
    assert len(emb) > 1
    assert sum(p.elem_end - p.elem_start for p in emb) == 128256 * 8192
    assert all(p.piece_shape[1:] == (8192,) for p in emb)
    assert max(j.memory_bytes for j in plan.jobs) <= 2 * GiB
    assert plan.summary()["peak_job_memory_bytes"] <= 2 * GiB
    check_tiling(plan)
    # sources point at the right rows of every input
    p = emb[1]
    row_bytes = 8192 * 2
    assert [s.start for s in p.sources] == [
        lay["model.embed_tokens.weight"].start + p.elem_start * 2
    ] * 3
    assert (p.sources[0].end - p.sources[0].start) % row_bytes == 0


def test_a_single_huge_row_is_split_by_elements():
    shapes = {"w": (1, 300_000_000)}
    lay = layout(shapes)
    plan = make_plan(cfg3(), [lay] * 3, ["w"], job_memory=256 * MiB, job_bytes=16 * MiB)
    assert len(plan.pieces) > 1 and all(len(p.piece_shape) == 1 for p in plan.pieces)
    assert max(j.memory_bytes for j in plan.jobs) <= 256 * MiB
    check_tiling(plan)


def test_rank0_empty_and_odd_shapes():
    shapes = {"scalar": (), "empty": (0, 16), "odd": (7, 3, 5), "vec": (13,)}
    lay = layout(shapes, "F32")
    plan = make_plan(cfg3(), [lay] * 3, list(shapes), job_bytes=64)
    assert {p.name for p in plan.pieces} == set(shapes)
    check_tiling(plan)
    assert plan.shards[0].size == len(plan.shards[0].header) + 4 * (1 + 0 + 105 + 13)


def test_shards_follow_the_hf_rule_and_many_shards():
    shapes = {f"t{i}": (256, 256) for i in range(40)}  # 128 KiB each in BF16
    lay = layout(shapes)
    plan = make_plan(cfg3(), [lay] * 3, list(shapes), shard_size=3 * 131072)
    assert len(plan.shards) == 14
    assert [len(s.tensors) for s in plan.shards] == [3] * 13 + [1]
    assert plan.shards[0].name == "model-00001-of-00014.safetensors"
    check_tiling(plan)
    # small parts are folded so every part but a shard's last is >= 5 MiB: here shards are small,
    # so each shard is one job
    assert len(plan.jobs) == 14


def test_min_part_size_folding():
    shapes = {"small": (16,), "big": (4096, 4096), "small2": (16,)}
    lay = layout(shapes, "F32")
    plan = make_plan(cfg3(), [lay] * 3, list(shapes), job_bytes=16 * MiB)
    check_tiling(plan)
    for j in plan.jobs[:-1]:
        assert j.nbytes >= 5 * MiB


def test_out_dtype_changes_layout():
    shapes = {"w": (4, 4)}
    lay = layout(shapes, "F32")
    cfg = load_config(
        {
            "merge_method": "linear",
            "models": [{"model": "a", "parameters": {"weight": 1}}],
            "out_dtype": "bfloat16",
        }
    )
    plan = make_plan(cfg, [lay], ["w"])
    assert plan.tensor_dtypes == {"w": "BF16"} and plan.pieces[0].nbytes == 32


def test_incompatible_models_list_every_difference():
    a = layout({"x": (2, 2), "y": (3,), "z": (1,)})
    b = layout({"x": (2, 3), "y": (3,), "w": (1,)})
    with pytest.raises(InputError) as ei:
        make_plan(cfg3(), [a, b, a], ["x", "y", "z"])
    text = str(ei.value)
    assert "3 problems" in text
    assert "tensor 'z' is in a but missing in b" in text
    assert "tensor 'w' is in b but missing in a" in text
    assert "tensor 'x': shape [2, 2] in a but [2, 3] in b" in text


def test_non_float_tensors_are_copied_never_merged():
    """int64 position ids, bool masks: one copy (of the base model's), in its own dtype, even
    when out_dtype is set; a dtype that differs between models cannot be copied."""
    a = {**layout({"ids": (4,)}, "I64"), **layout({"w": (2, 2)})}
    plan = make_plan(cfg3(out_dtype="float16"), [a] * 3, ["ids", "w"])
    ids = next(p for p in plan.pieces if p.name == "ids")
    assert ids.copy and len(ids.sources) == 1 and ids.sources[0].input == 0
    assert plan.tensor_dtypes == {"ids": "I64", "w": "F16"}
    assert not next(p for p in plan.pieces if p.name == "w").copy
    b = {**layout({"ids": (4,)}, "I32"), **layout({"w": (2, 2)})}
    with pytest.raises(InputError, match=r"'ids' is not floating point and its dtype differs"):
        make_plan(cfg3(), [a, b, a], ["ids", "w"])


def test_params_resolved_per_tensor():
    shapes = {
        "model.layers.0.mlp.up_proj.weight": (2, 2),
        "model.layers.1.mlp.up_proj.weight": (2, 2),
    }
    lay = layout(shapes)
    cfg = load_config(
        {
            "merge_method": "linear",
            "models": [
                {"model": "a", "parameters": {"weight": [0.0, 1.0]}},
                {"model": "b", "parameters": {"weight": 1.0}},
            ],
        }
    )
    plan = make_plan(cfg, [lay, lay], list(shapes))
    params = [json.loads(p.params.as_json()) for p in plan.pieces]
    assert [p["models"][0]["weight"] for p in params] == [0.0, 1.0]


def _fabricate_70b(folder, n_shards=30):
    """Sparse files with real headers: 723 tensors, ~141 GB per model, no data written."""
    return fabricate_checkpoint(str(folder), llama3_70b_config(), n_shards)


def test_llama3_70b_plan_in_seconds(tmp_path):
    sizes = [_fabricate_70b(tmp_path / m) for m in ("base", "a", "b")]
    assert sizes[0] > 140e9
    cfg = load_config(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(tmp_path / "base"),
            "models": [
                {"model": str(tmp_path / m), "parameters": {"weight": 0.5}} for m in ("a", "b")
            ],
        }
    )
    t0 = time.perf_counter()
    plan, _ = build_plan(cfg, RunOptions())
    elapsed = time.perf_counter() - t0
    s = plan.summary()
    assert s["tensors"] == 723
    assert s["bytes_read"] == 3 * sizes[0]
    assert s["bytes_written"] == sizes[0] + sum(len(sh.header) for sh in plan.shards)
    assert len(s["output_shards"]) == 30  # greedy HF rule; the published checkpoint has 30 too
    assert all(sh.size - len(sh.header) <= 5e9 for sh in plan.shards)
    assert s["peak_job_memory_bytes"] <= 2 * GiB
    assert elapsed < 20, elapsed
    check_tiling(plan)


def test_header_bytes_exact():
    header, laid = build_header([("a", "F32", (2,)), ("b", "BF16", ())])
    body = b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}}'
    pad = (-(8 + len(body))) % 8
    assert header == struct.pack("<Q", len(body) + pad) + body + b" " * pad
    assert [(e.begin, e.end) for e in laid] == [(0, 8), (8, 10)]
    assert itemsize("BF16") == 2
