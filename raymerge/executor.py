"""The only module that schedules work with Ray.

Each planned job becomes one Ray task that range-reads its own inputs and writes its own output
bytes (:mod:`raymerge.job`); the driver sees only small result dicts. Design points:

- **Resources**: every task asks for ``num_cpus`` (1), its planned ``memory`` (Ray's admission
  control, so a node never runs more jobs than its memory holds) and ``num_gpus`` when the
  cluster has GPUs; a task that got a GPU computes on it.
- **Backpressure**: at most ``in_flight`` tasks are submitted at once (default: twice the
  cluster's CPUs), so a 2,000-job 70B plan never floods the scheduler or the object store.
- **Retries**: Ray's own task retries are off; the executor resubmits a failed job itself (up to
  ``max_attempts``), so it can count retries for the summary and manifest. Worker or node loss
  and storage errors are retried; user errors (:class:`RaymergeError`, e.g. NaN inputs) fail the
  run at once. Jobs are idempotent (fixed offsets / part numbers), so a retry rewrites the same
  bytes.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from raymerge.errors import RaymergeError
from raymerge.job import JobContext, run_job
from raymerge.plan import Job


@dataclass
class ExecOptions:
    address: str | None = None
    num_cpus: int | None = None
    num_gpus_per_job: float | None = None  # None: 0.5 when the cluster has GPUs, else 0
    in_flight: int | None = None
    max_attempts: int = 3
    progress: bool = True


@dataclass
class ExecResult:
    results: dict[int, dict[str, Any]]
    retries: int
    nodes: list[str]
    seconds: float
    started_ray: bool
    errors: list[str] = field(default_factory=list)


def connect(opts: ExecOptions) -> bool:
    """Connect to the given/ambient cluster, or start a local one. True if we started it."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    ray.init(
        address="local",  # never attach silently to some other cluster on this machine
        num_cpus=opts.num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    return True


@ray.remote
def _remote_job(job: Job, ctx: JobContext, attempt: int) -> dict[str, Any]:
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    result = run_job(job, ctx, device=device, attempt=attempt)
    result["node"] = ray.get_runtime_context().get_node_id()
    result["host"] = socket.gethostname()
    return result


def _user_error(exc: BaseException) -> RaymergeError | None:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RaymergeError):
        return cause
    return exc if isinstance(exc, RaymergeError) else None


def execute(
    jobs: list[Job],
    ctx: JobContext,
    opts: ExecOptions,
    on_done: Callable[[Job, dict[str, Any]], None] | None = None,
) -> ExecResult:
    """Run every job on the connected cluster; raise on a user error or exhausted retries."""
    t0 = time.perf_counter()
    resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = resources.get("GPU", 0)
    num_gpus = opts.num_gpus_per_job if opts.num_gpus_per_job is not None else (0.5 if gpus else 0)
    limit = opts.in_flight or 2 * cpus
    ctx_ref = ray.put(ctx)
    pending: dict[ray.ObjectRef, tuple[Job, int]] = {}
    queue = list(reversed(jobs))
    results: dict[int, dict[str, Any]] = {}
    retries = 0

    def submit(job: Job, attempt: int) -> None:
        ref = _remote_job.options(
            num_cpus=1, num_gpus=num_gpus, memory=job.memory_bytes, max_retries=0
        ).remote(job, ctx_ref, attempt)
        pending[ref] = (job, attempt)

    try:
        while queue or pending:
            while queue and len(pending) < limit:
                submit(queue.pop(), 1)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in done:
                job, attempt = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - classify, then retry or fail
                    user = _user_error(exc)
                    if user is not None:
                        raise user from None
                    if attempt >= opts.max_attempts:
                        raise RuntimeError(
                            f"job {job.id} (tensors {job.pieces[0].name if job.pieces else '-'}"
                            f"...) failed {attempt} times; last error: {exc}"
                        ) from exc
                    retries += 1
                    print(
                        f"raymerge: retrying job {job.id} (attempt {attempt + 1}) after "
                        f"{type(exc).__name__}",
                        file=sys.stderr,
                    )
                    submit(job, attempt + 1)
                    continue
                results[job.id] = res
                if on_done:
                    on_done(job, res)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    nodes = sorted({r["node"] for r in results.values()})
    return ExecResult(results, retries, nodes, time.perf_counter() - t0, False)
