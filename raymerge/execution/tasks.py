"""The task bodies that run on Ray workers: one job, or one chunk's statistics round.

Both call the Ray-free bodies in :mod:`raymerge.worker` and add where they ran. The same bodies
run as Ray tasks (``remote_job`` / ``remote_stats``) or inside pooled worker actors
(:mod:`raymerge.execution.pool`), chosen by :class:`TaskKind`.
"""

from __future__ import annotations

import os
import socket
from enum import Enum
from typing import Any

import ray

from raymerge.execution.schedule import unpack_job
from raymerge.plan import Job, Piece
from raymerge.results import JobResult, StatsResult
from raymerge.worker import JobContext, run_job, run_stats


class TaskKind(Enum):
    JOB = "job"
    STATS = "stats"


def _device() -> str:
    return "cuda" if ray.get_gpu_ids() else "cpu"


def job_body(
    job: Job,
    ctx: JobContext,
    external: dict,
    attempt: int,
    names: tuple[str, ...],
    which: tuple[int, ...],
    *objs: Any,
    lock: Any = None,
) -> JobResult:
    """``objs``: the statistics of chunked tensors ``names``, then the kept source bytes of
    pieces ``which`` (object-store arguments: in task mode Ray prefers the node holding them)."""
    stats, held = unpack_job(job, names, which, objs)
    result = run_job(
        job,
        ctx,
        stats,
        device=_device(),
        attempt=attempt,
        compute_lock=lock,
        cached=held,
        external=external,
    )
    node = ray.get_runtime_context().get_node_id()
    return result.placed(node, socket.gethostname(), os.getpid())


def stats_body(
    piece: Piece,
    ctx: JobContext,
    prev: list,
    attempt: int,
    keep: bool,
    cached: list[Any] | None = None,
    lock: Any = None,
) -> Any:
    """Statistics of one chunk; with ``keep`` a second return value: its source bytes."""
    res, kept = run_stats(
        piece, ctx, prev, device=_device(), compute_lock=lock, cached=cached, keep=keep
    )
    res = StatsResult(res.stats, res.bytes_read, res.storage_retries, attempt).placed(
        ray.get_runtime_context().get_node_id()
    )
    return (res, kept) if keep else res


BODIES = {TaskKind.JOB: job_body, TaskKind.STATS: stats_body}
remote_job = ray.remote(job_body)
remote_stats = ray.remote(stats_body)
REMOTE = {TaskKind.JOB: remote_job, TaskKind.STATS: remote_stats}

__all__ = ["BODIES", "REMOTE", "TaskKind", "job_body", "stats_body"]
