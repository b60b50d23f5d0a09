"""Committing a finished run: shards, then the manifest, the side files, the index, ``_SUCCESS``.

Order of visibility (nothing looks complete before it is): the sink commits every shard (rename /
complete upload), then ``manifest.parquet``, ``config.json`` (dtype and layer count updated) and
the other side files (the reference model's, or the tokenizer the config asks for), the model
card ``README.md``,
``model.safetensors.index.json``, and ``_SUCCESS`` last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from raymerge import __version__
from raymerge.card import model_card
from raymerge.config import MergeConfig
from raymerge.io.files import write_small
from raymerge.io.reader import INDEX_FILE, ModelLayout
from raymerge.io.sinks.base import checksum
from raymerge.manifest import MANIFEST, build_table, write_manifest
from raymerge.model_config import rewrite
from raymerge.output import SUCCESS, TMP_FILE, is_checkpoint_folder, is_output_file
from raymerge.plan import Plan, ShardPlan
from raymerge.results import JobResult
from raymerge.storage import Location
from raymerge.tokenizer import SideFiles

MAX_SIDE_FILE_BYTES = 200_000_000  # a tokenizer.json of a 256k vocabulary is ~20 MB


def index_json(shards: Sequence[ShardPlan]) -> dict[str, Any]:
    """``model.safetensors.index.json``: total tensor bytes and the tensor -> shard map."""
    total = sum(s.size - len(s.header) for s in shards)
    weight_map = {t: s.name for s in shards for t in s.tensors}
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


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


def _side_files(plan: Plan, layouts: Sequence[ModelLayout]) -> dict[str, bytes]:
    """The output's side files (:class:`raymerge.tokenizer.SideFiles`; by default the reference
    model's), copied ones checked to be the version the run was planned from; config.json
    rewritten for the output."""
    side = plan.side or SideFiles({}, {n: 0 for n in layouts[0].side_files})
    out: dict[str, bytes] = {}
    for name, i in sorted(side.copied.items()):
        out.update(layouts[i].read_side([name], MAX_SIDE_FILE_BYTES))
    out.update(side.made)
    if "config.json" in out and plan.tensor_dtypes:
        conf = rewrite(
            json.loads(out["config.json"]),
            tensor_dtypes=plan.tensor_dtypes,
            layer_map=plan.layer_map,
            configs=[lay.config for lay in layouts],
            dequantized=plan.dequantized,
            vocab_size=side.vocab_size,
        )
        out["config.json"] = (json.dumps(conf, indent=2) + "\n").encode()
    return out


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def remove_stale(out: Location, written: set[str]) -> list[str]:
    """Remove what an earlier output left in OUT that this run did not write (old shards of
    another layout, side files the new reference lacks, temp files of a crashed write)."""
    gone = []
    out.fs.invalidate_cache(out.path)
    for entry in out.fs.ls(out.path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name in written or name == ".raymerge":
            continue
        if is_output_file(name) or TMP_FILE.match(name) or is_checkpoint_folder(out, name):
            out.fs.rm(out.child(name).path, recursive=True)
            gone.append(name)
    return gone


def commit_output(
    cfg: MergeConfig,
    out: Location,
    plan: Plan,
    layouts: Sequence[ModelLayout],
    results: Mapping[int, JobResult],
    summary: dict[str, Any],
    run_id: str,
) -> None:
    """Everything after the shards: manifest, side files, card, index, ``_SUCCESS``.

    The side files, the card and the index are built first, so the manifest records each one's
    checksum (``raymerge verify`` checks them); ``_SUCCESS`` pins the manifest's checksum."""
    if plan.zip_layout is not None and plan.zip_layout.checkpoints:  # one checkpoint per model
        from raymerge.zipit.outputs import commit_checkpoints

        return commit_checkpoints(cfg, out, plan, layouts, results, summary, run_id)
    public = cfg.public_dict()
    fingerprints = [lay.fingerprint() for lay in layouts]
    files = _side_files(plan, layouts)  # the reference model's: config, tokenizer, ...
    files["README.md"] = model_card(public, fingerprints, summary).encode()
    files[INDEX_FILE] = _json_bytes(index_json(plan.shards))
    metadata = {
        "raymerge_version": __version__,
        "config_hash": plan.config_hash,
        "run_id": run_id,
        "config": public,
        "inputs": fingerprints,
        "summary": summary,
        "shards": _shard_records(plan, results),
        "files": {n: {"size": len(d), "checksum": checksum(d)} for n, d in files.items()},
    }
    manifest = write_manifest(out, build_table(plan, results, metadata))
    for name, data in files.items():
        write_small(out, name, data)
    remove_stale(out, {*files, MANIFEST, SUCCESS, *(s.name for s in plan.shards)})
    record = {
        "run_id": run_id,
        "config_hash": plan.config_hash,
        "summary": summary,
        "manifest": {"size": len(manifest), "checksum": checksum(manifest)},
    }
    write_small(out, SUCCESS, _json_bytes(record))


__all__ = ["commit_output", "index_json", "remove_stale"]
