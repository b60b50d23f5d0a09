"""Methods that merge each tensor whole (TSV-M, Iso-C/CTS, nuslerp per column, ZipIt): never
chunked, and a tensor too big for one job is refused at planning, before any data is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from raymerge.config import load_config
from raymerge.errors import InputError
from raymerge.options import MiB
from raymerge.plan import make_plan
from raymerge.synth import llama_config
from tests.fabricate import fabricate_checkpoint
from tests.unit.plan.test_plan import check_tiling, layout

SHAPES = {"model.embed_tokens.weight": (8192, 4096), "model.norm.weight": (4096,)}


def cfg(method, **params):
    d = {"merge_method": method, "base_model": "a", "models": [{"model": "b"}, {"model": "c"}]}
    if method == "nuslerp":
        d["models"] = [{"model": m, "parameters": {"weight": 1.0}} for m in ("b", "c")]
    d["parameters"] = params
    return load_config(d)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tsv_m", {}),
        ("iso_c", {}),
        ("iso_cts", {}),
        ("nuslerp", {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ],
)
def test_whole_tensors_are_one_piece(method, params):
    lay = layout(SHAPES)
    plan = make_plan(cfg(method, **params), [lay] * 3, list(SHAPES), job_memory=16 << 30)
    emb = [p for p in plan.pieces if p.name == "model.embed_tokens.weight"]
    assert len(emb) == 1 and emb[0].piece_shape == (8192, 4096)
    check_tiling(plan)


def test_the_same_tensor_is_chunked_when_the_method_allows():
    lay = layout(SHAPES)
    plan = make_plan(cfg("nuslerp"), [lay] * 3, list(SHAPES), job_memory=256 * MiB)
    assert len([p for p in plan.pieces if p.name == "model.embed_tokens.weight"]) > 1


def test_a_whole_tensor_over_the_job_memory_is_refused_naming_it():
    lay = layout(SHAPES)
    with pytest.raises(InputError) as ei:
        make_plan(cfg("tsv_m"), [lay] * 3, list(SHAPES), job_memory=256 * MiB)
    text = str(ei.value)
    assert "1 tensor(s) do not fit one job's memory budget (--job-memory 268435456 bytes)" in text
    assert "model.embed_tokens.weight [8192, 4096]: tsv_m merges each tensor whole" in text
    assert "which needs --job-memory of at least 2.91 GiB (this run: 0.25 GiB)" in text
    assert "model.norm.weight" not in text  # small enough


def test_the_cli_refuses_before_reading_data(tmp_path):
    """Sparse checkpoints (headers only): the plan fails with exit code 2 and says why."""
    small = llama_config(hidden=1024, intermediate=2048, layers=1, vocab=32000, heads=8, kv_heads=8)
    for m in ("base", "a", "b"):
        fabricate_checkpoint(str(tmp_path / m), small, n_shards=1)
    conf = {
        "merge_method": "iso_c",
        "base_model": str(tmp_path / "base"),
        "models": [{"model": str(tmp_path / m)} for m in ("a", "b")],
    }
    path = tmp_path / "merge.json"
    path.write_text(json.dumps(conf))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-m", "raymerge", "plan", str(path), "--job-memory", "200MiB"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "model.embed_tokens.weight [32000, 1024]: iso_c merges each tensor whole" in proc.stderr
    assert "Traceback" not in proc.stderr
