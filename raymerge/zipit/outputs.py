"""Outputs of several checkpoints (a decoder partial zip: one per model), committed as K
complete raymerge outputs.

Layout::

    OUT/_SUCCESS                 written last; lists the checkpoints
    OUT/.raymerge/               the run's claim and ledger (one run)
    OUT/model_{j}/               model j's checkpoint: shards, model.safetensors.index.json,
                                 config.json and side files, README.md, manifest.parquet,
                                 _SUCCESS

Every ``OUT/model_{j}`` is what a one-checkpoint run writes into OUT (``raymerge verify
OUT/model_{j}`` checks it; ``raymerge verify OUT`` checks them all). Order of visibility: all
shards of all checkpoints are committed first (:mod:`raymerge.io.sinks`), then each checkpoint's
files with its ``_SUCCESS`` last, then ``OUT/_SUCCESS``. The markers of an earlier run in the
checkpoint folders are removed as soon as the output is claimed (:func:`unmark`), before any
shard changes, so a partial output never looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from raymerge.config import MergeConfig
from raymerge.io.files import write_small
from raymerge.io.reader import ModelLayout
from raymerge.output import SUCCESS
from raymerge.plan import Plan, ShardPlan
from raymerge.results import JobResult
from raymerge.storage import Location


def checkpoint_plan(plan: Plan, folder: str) -> Plan:
    """The part of ``plan`` in ``folder``, as the plan of a one-checkpoint output there (tensor
    and shard names without the folder, shard indices from 0, same job ids)."""
    prefix = folder + "/"
    cut = len(prefix)
    keep = [s for s in plan.shards if s.name.startswith(prefix)]
    index = {s.index: i for i, s in enumerate(keep)}
    shards = [
        ShardPlan(i, s.name[cut:], s.header, s.size, tuple(t[cut:] for t in s.tensors))
        for i, s in enumerate(keep)
    ]
    jobs = [
        replace(
            j, shard=index[j.shard], pieces=tuple(replace(p, name=p.name[cut:]) for p in j.pieces)
        )
        for j in plan.jobs
        if j.shard in index
    ]
    dtypes = {n[cut:]: d for n, d in plan.tensor_dtypes.items() if n.startswith(prefix)}
    return replace(plan, shards=shards, jobs=jobs, tensor_dtypes=dtypes, zip_layout=None)


def commit_checkpoints(
    cfg: MergeConfig,
    out: Location,
    plan: Plan,
    layouts: Sequence[ModelLayout],
    results: Mapping[int, JobResult],
    summary: dict[str, Any],
    run_id: str,
) -> None:
    """Commit each checkpoint as a one-checkpoint output in its folder, then ``OUT/_SUCCESS``
    (the shards are committed already)."""
    from raymerge.commit import commit_output, remove_stale

    assert plan.zip_layout is not None
    folders = list(plan.zip_layout.checkpoints)
    for folder in folders:
        sub = checkpoint_plan(plan, folder)
        part = {j.id: results[j.id] for j in sub.jobs}
        commit_output(cfg, out.child(folder), sub, layouts, part, summary, run_id)
    remove_stale(out, {SUCCESS, *folders})  # a one-checkpoint output's files of an earlier run
    record = {
        "run_id": run_id,
        "config_hash": plan.config_hash,
        "summary": summary,
        "checkpoints": folders,
    }
    write_small(out, SUCCESS, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def unmark(out: Location, folders: Sequence[str]) -> None:
    """Remove the ``_SUCCESS`` markers an earlier run left in the checkpoint folders."""
    for folder in folders:
        path = out.child(folder).child(SUCCESS).path
        if out.fs.exists(path):
            out.fs.rm(path)


__all__ = ["checkpoint_plan", "commit_checkpoints", "unmark"]
