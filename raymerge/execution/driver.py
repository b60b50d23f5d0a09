"""Running a plan's jobs on the connected cluster: the flow, the submitter, the results."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from raymerge.execution.schedule import Flow, MergeWork, Work
from raymerge.execution.submit import Submitter
from raymerge.options import ExecOptions
from raymerge.plan import Job
from raymerge.results import ExecResult, JobResult
from raymerge.worker import JobContext


def execute(
    jobs: Sequence[Job],
    ctx: JobContext,
    opts: ExecOptions,
    on_done: Callable[[Job, JobResult], None] | None = None,
    all_jobs: Sequence[Job] | None = None,
    external: Mapping[str, Any] | None = None,
) -> ExecResult:
    """Run ``jobs`` on the connected cluster; raise on a user error or exhausted retries.

    Args:
        jobs: what to run (a resumed run: what is left to do).
        ctx: the run's shared context.
        opts: where and how.
        on_done: called on the driver as each job finishes.
        all_jobs: the whole plan, when ``jobs`` is part of it.
        external: statistics computed before the jobs (ZipIt's matchings).

    Returns:
        Every job's result, and the run's counters.
    """
    t0 = time.perf_counter()
    submitter = Submitter(opts, ctx.remote_io)
    keep = opts.keep_bytes
    if keep is None:  # half the object store: the rest is for arguments, results, spilling
        keep = int(ray.cluster_resources().get("object_store_memory", 0) // 2)
    flow = Flow(
        jobs,
        all_jobs or jobs,
        ctx.inputs,
        keep,
        ray.put,
        ctx_ref=ray.put(ctx),
        external_ref=ray.put(dict(external or {})),
    )
    results: dict[int, JobResult] = {}

    def done(work: Work, res: Any) -> None:
        if not isinstance(work, MergeWork):
            flow.stats_done(work, res)
            return
        flow.job_done(work.job)
        results[work.job.id] = res
        if on_done:
            on_done(work.job, res)

    try:
        submitter.run(flow, done)
    finally:
        submitter.close()
    assert len(results) == len(jobs), "the flow ended with jobs left"
    nodes = sorted({r.node for r in results.values()})
    return ExecResult(
        results,
        submitter.retries,
        nodes,
        time.perf_counter() - t0,
        stats_bytes_read=flow.stats_read,
        stats_storage_retries=flow.stats_retries,
        kept_peak_bytes=flow.peak,
    )


__all__ = ["ExecResult", "execute"]
