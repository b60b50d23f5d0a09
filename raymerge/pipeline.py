"""One merge, end to end: headers -> plan -> claim OUT -> Ray jobs -> commit -> ``_SUCCESS``.

Every input is validated from headers before any tensor data is read (:func:`build_plan`); the
output is claimed (:mod:`raymerge.output`) only once the plan stands; jobs run on the cluster
(:mod:`raymerge.execution`); the commit (:mod:`raymerge.commit`) makes the output visible, with
``_SUCCESS`` last. Rerunning the same command resumes an interrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from raymerge.commit import commit_output
from raymerge.config import MergeConfig
from raymerge.execution.cluster import connect, disconnect
from raymerge.execution.driver import ExecResult, execute
from raymerge.execution.zipit_stage import ZipStage
from raymerge.io.reader import ModelLayout, read_model
from raymerge.io.sinks import Sink, make_sink
from raymerge.ledger import Ledger, kept_jobs, plan_hash
from raymerge.options import MIN_PART_BYTES, RunOptions
from raymerge.output import Claim, claim_output
from raymerge.plan import Job, Plan, make_plan
from raymerge.progress import Progress
from raymerge.results import JobResult
from raymerge.storage import Location, resolve, storage_retries
from raymerge.summary import run_summary
from raymerge.worker import FaultHook, JobContext, peak_rss


@dataclass(frozen=True)
class RunHooks:
    """Injection points for fault tests: ``job_fault`` runs in the workers between a job's read
    and its compute; ``after_job`` runs on the driver after each finished job has been recorded
    in the ledger on storage (with the number recorded so far). None in every real run."""

    job_fault: FaultHook | None = None
    after_job: Callable[[Job, int], None] | None = None


def load_inputs(cfg: MergeConfig) -> list[ModelLayout]:
    """Read and validate every input's headers (range reads only)."""
    return [read_model(ref, resolve(ref, cfg.storage_options)) for ref in cfg.input_refs()]


def build_plan(
    cfg: MergeConfig, opts: RunOptions, min_part_bytes: int = MIN_PART_BYTES
) -> tuple[Plan, list[ModelLayout]]:
    """Read headers and plan. ``min_part_bytes``: smallest job (S3 part) but a shard's last;
    0 for local outputs, which have no such limit."""
    layouts = load_inputs(cfg)
    ref = layouts[0]
    plan = make_plan(
        cfg,
        [lay.tensors for lay in layouts],
        ref.order,
        model_configs=[lay.config for lay in layouts],
        shard_size=opts.shard_size,
        job_memory=opts.job_memory,
        job_bytes=opts.job_bytes,
        min_part_bytes=min_part_bytes,
    )
    return plan, layouts


@dataclass
class _Run:
    """A planned run whose output is claimed."""

    cfg: MergeConfig
    out: Location
    plan: Plan
    layouts: list[ModelLayout]
    zipit: ZipStage | None
    sink: Sink
    claim: Claim
    ledger: Ledger


def _plan_and_claim(cfg: MergeConfig, out_url: str, opts: RunOptions) -> _Run:
    out = resolve(out_url, cfg.storage_options)
    # all input validation happens here, before any tensor data is read
    plan, layouts = build_plan(cfg, opts, 0 if out.is_local else MIN_PART_BYTES)
    zipit = ZipStage.prepare(cfg, plan, layouts, opts)  # calibration read, memory checked
    sink = make_sink(out, plan.shard_specs())
    layout = plan_hash(plan)
    claim = claim_output(out, plan.config_hash, layout, opts.overwrite)
    if zipit is not None and claim.complete is None:
        zipit.unmark(out)  # a partial zip's checkpoint markers of an earlier run
    ledger = Ledger(out, layout, interval=opts.ledger_interval)
    return _Run(cfg, out, plan, layouts, zipit, sink, claim, ledger)


def _execute(
    run: _Run, opts: RunOptions, hooks: RunHooks
) -> tuple[ExecResult, dict[int, JobResult]]:
    """Prepare the sink, keep what an interrupted run left, run the rest; every job's result."""
    records = run.ledger.load() if run.claim.resume else {}
    if not run.claim.resume:
        run.ledger.clear()
        run.sink.discard()
    run.sink.prepare(resume=run.claim.resume)
    plan = run.plan
    headers = [len(s.header) for s in plan.shards]
    kept = kept_jobs(run.sink, plan.jobs, records, headers) if records else set()
    todo = [j for j in plan.jobs if j.id not in kept]
    progress = Progress(todo, enabled=opts.execution.progress)
    ctx = JobContext(
        inputs=tuple(lay.location for lay in run.layouts),
        method=plan.method,
        math_dtype="F64" if run.cfg.dtype in ("float64", "fp64", "double") else "F32",
        headers=tuple(s.header for s in plan.shards),
        sink=run.sink,
        allow_nonfinite=opts.allow_nonfinite,
        fault=hooks.job_fault,
    )

    def done(job: Job, res: JobResult) -> None:
        progress.update(job, res)
        run.ledger.record(res)
        if hooks.after_job is not None:  # (tests) what is recorded is on storage first
            run.ledger.flush()
            hooks.after_job(job, len(run.ledger.recorded))

    external = run.zipit.run(opts.execution) if run.zipit and todo else None
    try:
        result = execute(
            todo, ctx, opts.execution, on_done=done, all_jobs=plan.jobs, external=external
        )
    finally:
        progress.close()
        run.ledger.flush()
    results = {j: replace(records[j], reused=True) for j in kept}
    results.update(result.results)
    return result, results


def run_merge(
    cfg: MergeConfig, out_url: str, opts: RunOptions, hooks: RunHooks | None = None
) -> dict[str, Any]:
    """Merge ``cfg`` into ``out_url``.

    Rerunning the same command resumes: an identical finished run is left as it is; an
    interrupted one keeps every job whose stored bytes still match the ledger and recomputes
    the rest.

    Args:
        cfg: the validated config.
        out_url: a local/shared folder or an ``s3://`` URL.
        opts: the run options.
        hooks: fault-injection hooks (tests only).

    Returns:
        The run summary (``already_complete: True`` for a finished identical run).
    """
    t_start = time.perf_counter()
    driver_retries = storage_retries()
    run = _plan_and_claim(cfg, out_url, opts)
    if run.claim.complete is not None:
        summary = dict(run.claim.complete.get("summary", {}))
        summary.update(already_complete=True, wall_s=time.perf_counter() - t_start)
        return summary
    started_ray = connect(opts.execution)
    try:
        result, results = _execute(run, opts, hooks or RunHooks())
        plan = run.plan
        run.sink.commit(
            [j.byte_range for j in plan.jobs], {j: r.receipt for j, r in results.items()}
        )
        summary = run_summary(
            plan, result, results, time.perf_counter() - t_start, run.claim.run_id, peak_rss()
        )
        summary["reused_jobs"] = len(results) - len(result.results)
        if run.zipit:
            summary["zipit"] = run.zipit.info
        summary["storage_retries"] += storage_retries() - driver_retries  # the driver's own
        commit_output(cfg, run.out, plan, run.layouts, results, summary, run.claim.run_id)
        run.ledger.clear()
        summary["wall_s"] = time.perf_counter() - t_start
        return summary
    finally:
        disconnect(started_ray)


__all__ = ["RunHooks", "build_plan", "load_inputs", "run_merge"]
