"""Running a plan's jobs in this process, on threads, without Ray: the executor for small
local merges.

Starting a local Ray cluster and its worker processes (each importing torch) costs several
seconds, more than a small merge's whole work, where mergekit pays nothing. For a merge that
reads little, on one machine, with no cluster given, the same jobs and the same statistics flow
(:mod:`raymerge.execution.schedule`) run on a thread per CPU in the driver instead: torch
releases the GIL inside kernels, each job reads and writes its own byte range as on a worker,
and the output is bit-identical. What Ray adds (process isolation, retries of lost workers,
memory admission) matters for big merges, which go to Ray.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from raymerge.execution.schedule import Flow, MergeWork, Work, stalled, unpack_job
from raymerge.options import ExecOptions
from raymerge.plan import Job
from raymerge.results import JobResult
from raymerge.worker import JobContext, run_job, run_stats

LOCAL_MAX_BYTES = 8_000_000_000  # auto: merges reading more than this go to Ray


def use_local(opts: ExecOptions, bytes_read: int, needs_ray: bool = False) -> bool:
    """Run in-process? ``--executor local``, or ``auto`` with no cluster given (no address, no
    RAY_ADDRESS, Ray not already connected in this process), no pool or GPU asked for, and a
    merge reading at most ``LOCAL_MAX_BYTES``. Decided without importing Ray."""
    if opts.executor != "auto" or needs_ray:
        return opts.executor == "local" and not needs_ray
    ray = sys.modules.get("ray")
    connected = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    asked = opts.address or os.environ.get("RAY_ADDRESS") or opts.keep_workers
    return not (connected or asked or opts.num_gpus_per_job) and bytes_read <= LOCAL_MAX_BYTES


def _run(flow: Flow, work: Work) -> Any:
    if isinstance(work, MergeWork):
        job, ctx, external, attempt, names, which, *objs = flow.job_args(work.job, 1).args
        stats, held = unpack_job(job, names, which, tuple(objs))
        res = run_job(job, ctx, stats, cached=held, external=external)
        return res.placed("local", socket.gethostname(), os.getpid())
    piece, ctx, prev, _, keep, cached = flow.stats_args(work, 1).args
    return run_stats(piece, ctx, prev, cached=cached, keep=False)[0]


def execute_local(
    jobs: Sequence[Job],
    ctx: JobContext,
    opts: ExecOptions,
    on_done: Callable[[Job, JobResult], None] | None = None,
    all_jobs: Sequence[Job] | None = None,
    external: Mapping[str, Any] | None = None,
) -> tuple[dict[int, JobResult], Flow]:
    """Run ``jobs`` on ``num_cpus`` threads of this process (one torch thread each); the
    results and the flow (its counters). Errors are raised as they are (no retries)."""
    import torch

    threads = max(1, opts.num_cpus or os.cpu_count() or 1)
    flow = Flow(jobs, all_jobs or jobs, ctx.inputs, 0, lambda v: v, ctx, dict(external or {}))
    results: dict[int, JobResult] = {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one per job thread, as Ray gives a 1-CPU task
    pool = ThreadPoolExecutor(threads, thread_name_prefix="raymerge-job")
    hung = False
    try:
        pending: dict[Future, Work] = {}
        last = time.monotonic()  # when work last finished (or the run started)
        while True:
            while len(pending) < threads and (w := flow.next(not pending)) is not None:
                pending[pool.submit(_run, flow, w)] = w
            if not pending:
                break
            done, _ = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
            if done:
                last = time.monotonic()
            elif opts.stall_timeout and time.monotonic() - last > opts.stall_timeout:
                hung = True  # a thread is blocked (a read that never returns): do not join it
                raise stalled(opts.stall_timeout, list(pending.values()), stuck=True)
            for fut in done:
                work, res = pending.pop(fut), fut.result()
                if isinstance(work, MergeWork):
                    flow.job_done(work.job)
                    results[work.job.id] = res
                    if on_done:
                        on_done(work.job, res)
                else:
                    flow.stats_done(work, res)
    finally:
        pool.shutdown(wait=not hung, cancel_futures=True)
        torch.set_num_threads(torch_threads)
    return results, flow


__all__ = ["LOCAL_MAX_BYTES", "execute_local", "use_local"]
