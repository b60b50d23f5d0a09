"""Committing a finished run: shards, then the manifest, the side files, the index, ``_SUCCESS``.

Order of visibility (nothing looks complete before it is): the sink commits every shard (rename /
complete upload), then ``manifest.parquet``, ``config.json`` (dtype and layer count updated) and
the other side files of the reference model, the model card ``README.md``,
``model.safetensors.index.json``, and ``_SUCCESS`` last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from raymerge import __version__
from raymerge.card import model_card
from raymerge.config import MergeConfig
from raymerge.io.files import write_json, write_small
from raymerge.io.header import ST_DTYPES
from raymerge.io.reader import INDEX_FILE, ModelLayout
from raymerge.manifest import build_table, write_manifest
from raymerge.output import SUCCESS
from raymerge.plan import Plan, ShardPlan
from raymerge.results import JobResult
from raymerge.storage import Location


def index_json(shards: Sequence[ShardPlan]) -> dict[str, Any]:
    """``model.safetensors.index.json``: total tensor bytes and the tensor -> shard map."""
    total = sum(s.size - len(s.header) for s in shards)
    weight_map = {t: s.name for s in shards for t in s.tensors}
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def _torch_dtype_name(st: str) -> str:
    return ST_DTYPES[st][0]  # torch's name of the dtype, e.g. "bfloat16"


def _shard_records(plan: Plan, results: Mapping[int, JobResult]) -> list[dict[str, Any]]:
    first = {j.shard: results[j.id] for j in plan.jobs if j.part == 1}
    return [
        {
            "name": s.name,
            "size": s.size,
            "header_len": len(s.header),
            "header_checksum": first[s.index].header_checksum,
        }
        for s in plan.shards
    ]


def _config_json(data: bytes, plan: Plan) -> bytes:
    """The reference model's config.json, rewritten for the output."""
    conf = json.loads(data)
    dtypes = set(plan.tensor_dtypes.values())
    if len(dtypes) == 1:
        conf["torch_dtype"] = _torch_dtype_name(dtypes.pop())
    if plan.num_hidden_layers is not None:
        conf["num_hidden_layers"] = plan.num_hidden_layers
    return (json.dumps(conf, indent=2) + "\n").encode()


def commit_output(
    cfg: MergeConfig,
    out: Location,
    plan: Plan,
    layouts: Sequence[ModelLayout],
    results: Mapping[int, JobResult],
    summary: dict[str, Any],
    run_id: str,
) -> None:
    """Everything after the shards: manifest, side files, card, index, ``_SUCCESS``."""
    if plan.zip_layout is not None and plan.zip_layout.checkpoints:  # one checkpoint per model
        from raymerge.zipit.outputs import commit_checkpoints

        return commit_checkpoints(cfg, out, plan, layouts, results, summary, run_id)
    public = cfg.public_dict()
    fingerprints = [lay.fingerprint() for lay in layouts]
    metadata = {
        "raymerge_version": __version__,
        "config_hash": plan.config_hash,
        "run_id": run_id,
        "config": public,
        "inputs": fingerprints,
        "summary": summary,
        "shards": _shard_records(plan, results),
    }
    write_manifest(out, build_table(plan, results, metadata))
    ref = layouts[0]  # the reference model: config.json, tokenizer, generation config
    for name in ref.side_files:
        data = ref.location.fs.cat_file(ref.location.child(name).path)
        if name == "config.json" and plan.tensor_dtypes:
            data = _config_json(data, plan)
        write_small(out, name, data)
    write_small(out, "README.md", model_card(public, fingerprints, summary).encode())
    write_json(out, INDEX_FILE, index_json(plan.shards))
    write_json(
        out, SUCCESS, {"run_id": run_id, "config_hash": plan.config_hash, "summary": summary}
    )


__all__ = ["commit_output", "index_json"]
