"""Bounded submission with executor-side retries, for statistics rounds and merge jobs alike.

Work goes to a pool of worker actors (``keep_workers``, GPU clusters) or out as Ray tasks with
``num_cpus`` (1; 0.5 when an input or the output is remote, so a CPU computes one job while
another waits on the network), ``num_gpus`` and ``memory`` (Ray's admission control, so a node
never runs more jobs than its memory holds). At most ``in_flight`` are pending at once (default:
twice the job slots), so a 2,000-job 70B plan never floods the scheduler or the object store.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import ray

from raymerge.errors import ClusterError
from raymerge.execution.pool import Pool
from raymerge.execution.retry import Decision, decide, user_error
from raymerge.execution.schedule import Flow, MergeWork, StatsWork, Work, stalled
from raymerge.execution.tasks import REMOTE, TaskKind
from raymerge.options import ExecOptions
from raymerge.redaction import redact_text


class Submitter:
    """Where work runs and how much of it is in flight."""

    def __init__(self, opts: ExecOptions, remote_io: bool = False) -> None:
        resources = ray.cluster_resources()
        cpus = max(1, int(resources.get("CPU", 1)))
        gpus = resources.get("GPU", 0)
        self.num_gpus = (
            opts.num_gpus_per_job if opts.num_gpus_per_job is not None else (0.5 if gpus else 0)
        )
        # jobs that wait on the network share a CPU two at a time: one computes while the other
        # reads or writes (local jobs wait on nothing: one per CPU)
        self.num_cpus = 1 / (opts.jobs_per_cpu or (2 if remote_io else 1))
        self.limit = opts.in_flight or int(2 * cpus / self.num_cpus)
        self.max_attempts = opts.max_attempts
        self.stall_timeout = opts.stall_timeout
        self.retries = 0
        self.pool: Pool | None = None
        if opts.keep_workers > 0 or (gpus and self.num_gpus):
            size = max(1, int(gpus)) if gpus and self.num_gpus else cpus
            size = min(size, opts.in_flight or size)
            self.pool = Pool(size, 1 if gpus and self.num_gpus else 0, opts.keep_workers)
        elif not gpus:
            self.pool = Pool.adopt(min(cpus, opts.in_flight or cpus))
        if self.pool is not None:
            slots = len(self.pool.free)
            self.limit = min(slots, opts.in_flight or slots)
            late = self.pool.wait_ready(opts.connect_timeout or None)
            if late:
                self.pool.close()
                raise ClusterError(
                    f"timed out after {opts.connect_timeout:.0f} s waiting for worker actors "
                    f"{late} to start (does the cluster have the CPUs/GPUs they ask for? "
                    "`ray status` shows pending actors); raise --connect-timeout"
                )

    def _submit(self, kind: TaskKind, opts: dict[str, Any], args: tuple, num_returns: int) -> Any:
        if self.pool is not None:
            return self.pool.submit(kind, num_returns, *args)
        return REMOTE[kind].options(**opts, num_returns=num_returns).remote(*args)

    def submit(self, flow: Flow, work: Work, attempt: int) -> Any:
        """Submit ``work`` (attempt ``attempt``); its result's ref."""
        opts = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "memory": work.memory_bytes,
            "max_retries": 0,
        }
        if isinstance(work, MergeWork):
            return self._submit(TaskKind.JOB, opts, flow.job_args(work.job, attempt).args, 1)
        sa = flow.stats_args(work, attempt)
        if not sa.keep:
            return self._submit(TaskKind.STATS, opts, sa.args, 1)
        ref, raw = self._submit(TaskKind.STATS, opts, sa.args, 2)
        flow.kept_pending(work, raw)
        return ref

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def run(self, flow: Flow, on_done: Callable[[Work, Any], None]) -> None:
        """Submit what the flow hands out while fewer than ``limit`` are pending; retry failures
        as :func:`raymerge.execution.retry.decide` says; return when the flow hands out nothing
        and nothing is pending."""
        pending: dict[Any, tuple[Work, int]] = {}
        last = time.monotonic()  # when work last finished (or the run started)
        try:
            while True:
                while len(pending) < self.limit:
                    free = self.pool.free_node() if self.pool else None
                    work = flow.next(not pending, free)
                    if work is None:
                        break
                    pending[self.submit(flow, work, 1)] = (work, 1)
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                if done:
                    last = time.monotonic()
                elif self.stall_timeout and time.monotonic() - last > self.stall_timeout:
                    raise stalled(self.stall_timeout, [w for w, _ in pending.values()])
                for ref in done:
                    work, attempt = pending.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - classify, then retry or fail
                        if self.pool is not None:
                            self.pool.release(ref, exc)
                        decision = decide(exc, attempt, self.max_attempts)
                        if decision is Decision.FAIL:
                            raise user_error(exc) from None
                        if decision is Decision.GIVE_UP:
                            raise RuntimeError(
                                f"{work.label()} failed {attempt} times; last error: {exc}"
                            ) from exc
                        self.retries += 1
                        print(
                            redact_text(
                                f"raymerge: retrying {work.label()} (attempt {attempt + 1}) "
                                f"after {type(exc).__name__}"
                            ),
                            file=sys.stderr,
                        )
                        pending[self.submit(flow, work, attempt + 1)] = (work, attempt + 1)
                        continue
                    if self.pool is not None:
                        self.pool.release(ref, None, res.node or None)
                    on_done(work, res)
        except BaseException:
            for ref in pending:
                try:  # actor tasks (pooled workers) cannot be force-cancelled
                    ray.cancel(ref, force=self.pool is None)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise


__all__ = ["StatsWork", "Submitter"]
