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
from raymerge.config.tokenizer import split_lora
from raymerge.errors import InputError
from raymerge.execution.local import execute_local, use_local
from raymerge.io.files import DiskFullError
from raymerge.io.fingerprint import digest, from_listing
from raymerge.io.lease import Lease
from raymerge.io.ranges import fetch
from raymerge.io.reader import ModelLayout, read_adapter, read_model
from raymerge.io.sinks import Sink, make_sink
from raymerge.ledger import Ledger, kept_jobs, plan_hash
from raymerge.options import MIN_PART_BYTES, RunOptions
from raymerge.output import (
    Claim,
    check_not_an_input,
    claim_output,
    inspect_output,
    unmark_checkpoints,
)
from raymerge.plan import Job, Plan, make_plan
from raymerge.plan.lora import AdapterFiles
from raymerge.progress import Progress
from raymerge.redaction import redact
from raymerge.results import ExecResult, JobResult
from raymerge.storage import Location, resolve, storage_retries
from raymerge.summary import peak_rss, run_summary
from raymerge.tokenizer import (
    READ_FILES,
    ModelTokenizer,
    chat_template,
    config_vocab_size,
    output_vocabulary,
    side_files,
)
from raymerge.worker import FaultHook, JobContext


@dataclass(frozen=True)
class RunHooks:
    """Injection points for fault tests: ``job_fault`` runs in the workers between a job's read
    and its compute; ``after_job`` runs on the driver after each finished job has been recorded
    in the ledger on storage (with the number recorded so far). None in every real run."""

    job_fault: FaultHook | None = None
    after_job: Callable[[Job, int], None] | None = None


MAX_TOKENIZER_BYTES = 200_000_000  # a tokenizer.json of a 256k vocabulary is ~20 MB


def load_inputs(cfg: MergeConfig) -> list[ModelLayout]:
    """Read and validate every input's headers (range reads only): the models of
    ``cfg.input_refs()`` (``model+lora``: the model's folder), then their LoRA adapters, in
    that order."""
    models, adapters = [], []
    for ref in cfg.input_refs():
        model, lora = split_lora(ref)
        models.append(read_model(model, resolve(model, cfg.storage_options)))
        if lora is not None:
            adapters.append(read_adapter(lora, resolve(lora, cfg.storage_options)))
    return models + adapters


def tokenizer_inputs(cfg: MergeConfig, models: list[ModelLayout]) -> list[ModelTokenizer]:
    """Each model's tokenizer files, as the vocabulary and the chat template need them (small
    bounded reads of side files, never the weights)."""
    need = cfg.vocabulary is not None or cfg.chat_template is not None
    return [
        ModelTokenizer(
            m.ref,
            m.read_side(list(READ_FILES), MAX_TOKENIZER_BYTES) if need else {},
            tuple(m.side_files),
            config_vocab_size(m.config),
        )
        for m in models
    ]


def build_plan(
    cfg: MergeConfig, opts: RunOptions, min_part_bytes: int = MIN_PART_BYTES
) -> tuple[Plan, list[ModelLayout]]:
    """Read headers and the small tokenizer files, and plan. ``min_part_bytes``: smallest job
    (S3 part) but a shard's last; 0 for local outputs, which have no such limit."""
    layouts = load_inputs(cfg)
    refs = cfg.input_refs()
    models, extra = layouts[: len(refs)], iter(layouts[len(refs) :])
    adapters: list[AdapterFiles | None] = []
    for r in refs:
        a = next(extra) if split_lora(r)[1] is not None else None
        adapters.append(None if a is None else AdapterFiles(a.ref, a.tensors, a.config or {}))
    toks = tokenizer_inputs(cfg, models)
    vocab = output_vocabulary(cfg, toks)
    plan = make_plan(
        cfg,
        [lay.tensors for lay in models],
        models[0].order,
        model_configs=[lay.config for lay in models],
        shard_size=opts.shard_size,
        job_memory=opts.job_memory,
        job_bytes=opts.job_bytes,
        min_part_bytes=min_part_bytes,
        vocab=vocab,
        adapters=adapters,
    )
    plan.side = side_files([m.side_files for m in models], toks, vocab, chat_template(cfg, toks))
    check_copied_tensors(cfg, plan, models)
    return plan, layouts


@dataclass
class _Run:
    """A planned run whose output is claimed."""

    cfg: MergeConfig
    out: Location
    plan: Plan
    layouts: list[ModelLayout]
    zipit: Any  # raymerge.execution.zipit_stage.ZipStage, for zipit/permute runs
    sink: Sink
    claim: Claim
    ledger: Ledger


def check_copied_tensors(cfg: MergeConfig, plan: Plan, layouts: list[ModelLayout]) -> None:
    """Non-float tensors (position ids, masks) are copied, not merged: unless
    ``non_float_tensors: from_base``, every model's copy must be the same bytes (they are
    small: read here, before anything is claimed)."""
    if cfg.non_float_tensors == "from_base":
        return
    names = sorted({p.name for p in plan.pieces if p.copy})
    differ = []
    for name in names:
        held = [(lay, lay.tensors[name]) for lay in layouts if name in lay.tensors]
        data = {
            bytes(fetch(lay.location, [(t.file, t.start, t.end)], lay.files)[0]) for lay, t in held
        }
        if len(data) > 1:
            differ.append(name)
    if differ:
        raise InputError(
            f"non-float tensors {differ[:5]} (position ids, masks: copied, never merged) differ "
            "between the models, so no copy is right for all of them. Set "
            "`non_float_tensors: from_base` in the config to take the base model's"
        )


def _calibration_input(cfg: MergeConfig, plan: Plan) -> list[dict[str, Any]]:
    """A zip's calibration file as one more input of the run record (taken before it is read),
    so a changed calibration is never resumed or found "already complete"."""
    if plan.zip_layout is None or cfg.calibration is None:
        return []
    loc = resolve(cfg.calibration.url, cfg.storage_options)
    fp = from_listing(loc.fs.info(loc.path), loc.path if loc.is_local else None)
    name = loc.path.rstrip("/").rsplit("/", 1)[-1]
    return [{"model": redact(loc.url), "kind": "calibration", "files": {name: fp.as_record()}}]


def _plan_and_claim(cfg: MergeConfig, out_url: str, opts: RunOptions, lease: Lease) -> _Run:
    out = lease.out
    # all input validation happens here, before any tensor data is read
    plan, layouts = build_plan(cfg, opts, 0 if out.is_local else MIN_PART_BYTES)
    check_not_an_input(out, [lay.location for lay in layouts])
    inspect_output(out, opts.overwrite)
    zipit = None
    inputs = [lay.fingerprint() for lay in layouts] + _calibration_input(cfg, plan)
    if plan.zip_layout is not None:  # reads and checks the calibration file, checks memory
        from raymerge.execution.zipit_stage import ZipStage

        zipit = ZipStage.prepare(cfg, plan, layouts, opts)
    sink = make_sink(out, plan.shard_specs())
    layout = plan_hash(plan)
    lease.acquire()
    claim = claim_output(out, plan.config_hash, layout, opts.overwrite, inputs, digest(inputs))
    if claim.complete is None:  # no checkpoint of an earlier run may look complete meanwhile
        unmark_checkpoints(out)
        if zipit is not None:
            zipit.unmark(out)
    ledger = Ledger(out, layout, interval=opts.ledger_interval)
    return _Run(cfg, out, plan, layouts, zipit, sink, claim, ledger)


def _execute(
    run: _Run, opts: RunOptions, hooks: RunHooks, local: bool
) -> tuple[ExecResult, dict[int, JobResult]]:
    """Prepare the sink, keep what an interrupted run left, run the rest; every job's result."""
    # a zip's matchings are recomputed on every run (device and float32 rounding may differ),
    # so its jobs are never kept: kept ones could follow another matching than the new ones
    records = run.ledger.load() if run.claim.resume and run.zipit is None else {}
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
        fingerprints=tuple(lay.files for lay in run.layouts),
        s3_reader=opts.execution.s3_reader,
    )

    def done(job: Job, res: JobResult) -> None:
        progress.update(job, res)
        run.ledger.record(res)
        if hooks.after_job is not None:  # (tests) what is recorded is on storage first
            run.ledger.flush()
            hooks.after_job(job, len(run.ledger.recorded))

    external = run.zipit.run(opts.execution) if run.zipit and todo else None
    try:
        if local:
            t0 = time.perf_counter()
            got, flow = execute_local(todo, ctx, opts.execution, done, plan.jobs, external)
            seconds = time.perf_counter() - t0
            result = ExecResult(got, 0, ["local"], seconds, flow.stats_read, flow.stats_retries)
        else:
            from raymerge.execution.driver import execute

            result = execute(
                todo, ctx, opts.execution, on_done=done, all_jobs=plan.jobs, external=external
            )
    except DiskFullError:
        run.ledger.pending.clear()
        run.ledger.clear()
        run.sink.discard()  # free the space the staged output holds
        raise
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
    lease = Lease(resolve(out_url, cfg.storage_options, output=True))
    try:
        run = _plan_and_claim(cfg, out_url, opts, lease)
        if run.claim.complete is not None:
            summary = dict(run.claim.complete.get("summary", {}))
            summary.update(already_complete=True, wall_s=time.perf_counter() - t_start)
            return summary
        return _run_and_commit(run, opts, hooks or RunHooks(), lease, t_start, driver_retries)
    finally:
        lease.release()


def _run_and_commit(
    run: _Run, opts: RunOptions, hooks: RunHooks, lease: Lease, t_start: float, retries0: int
) -> dict[str, Any]:
    plan = run.plan
    local = use_local(opts.execution, sum(j.bytes_read for j in plan.jobs), run.zipit is not None)
    if not local:
        from raymerge.execution.cluster import connect, disconnect

        started_ray = connect(opts.execution)
    try:
        result, results = _execute(run, opts, hooks, local)
        plan = run.plan
        lease.check()
        run.sink.commit(
            [j.byte_range for j in plan.jobs], {j: r.receipt for j, r in results.items()}
        )
        summary = run_summary(
            plan, result, results, time.perf_counter() - t_start, run.claim.run_id, peak_rss()
        )
        summary["reused_jobs"] = len(results) - len(result.results)
        summary["executor"] = "local" if local else "ray"
        if run.zipit:
            summary["zipit"] = run.zipit.info
        summary["storage_retries"] += storage_retries() - retries0  # the driver's own
        commit_output(run.cfg, run.out, plan, run.layouts, results, summary, run.claim.run_id)
        run.ledger.clear()
        summary["wall_s"] = time.perf_counter() - t_start
        return summary
    finally:
        if not local:
            disconnect(started_ray)


__all__ = ["RunHooks", "build_plan", "load_inputs", "run_merge"]
