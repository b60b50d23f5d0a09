"""The manifest: one row per piece, JSON only at its edge, garbage refused clearly."""

from __future__ import annotations

import json

import pytest

from raymerge.config import load_config
from raymerge.manifest import build_table, parse_manifest, write_manifest
from raymerge.plan import make_plan
from raymerge.results import JobResult
from raymerge.storage import resolve
from tests.unit.plan.test_plan import layout


def test_rows_params_and_metadata_round_trip(tmp_path):
    cfg = load_config({"merge_method": "linear", "models": [
        {"model": "a", "parameters": {"weight": [0.0, 1.0]}}, {"model": "b", "parameters": {"weight": 1.0}}]})  # fmt: skip
    lay = layout({"x": (4, 4), "model.layers.0.w": (2,), "model.layers.1.w": (2,)})
    plan = make_plan(cfg, [lay, lay], list(lay), min_part_bytes=0)
    results = {j.id: JobResult(j.id, tuple(f"c{k}" for k in range(len(j.pieces))), None, None)
               for j in plan.jobs}  # fmt: skip
    data = write_manifest(resolve(str(tmp_path), output=True),
                          build_table(plan, results, {"run_id": "r1", "inputs": []}))  # fmt: skip
    table, meta = parse_manifest(data)
    rows = {r["name"]: r for r in table.to_pylist()}
    assert meta["run_id"] == "r1" and set(rows) == {"x", "model.layers.0.w", "model.layers.1.w"}
    assert json.loads(rows["model.layers.1.w"]["params"])["models"][0]["weight"] == 1.0
    assert json.loads(rows["model.layers.0.w"]["params"])["models"][0]["weight"] == 0.0


@pytest.mark.parametrize("data", [b"", b"not parquet at all", b"PAR1" + b"\0" * 64 + b"PAR1"])
def test_garbage_is_a_value_error_not_a_crash(data):
    with pytest.raises(ValueError):
        parse_manifest(data)
