"""One merge, end to end: headers -> plan -> output checks -> Ray jobs -> commit -> _SUCCESS.

Order of visibility on the output (nothing looks complete before it is):

1. ``.raymerge/run.json`` (config hash, run id) claims the folder; ``_SUCCESS`` of an earlier run
   of the same config is removed first.
2. jobs write into staging files / open multipart uploads (never a final shard name);
3. shards are committed (rename / complete upload), then ``manifest.parquet``, side files
   (config.json, tokenizer, model card), ``model.safetensors.index.json``, and ``_SUCCESS`` last.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from raymerge import __version__
from raymerge.config import MergeConfig
from raymerge.errors import InputError, OutputError
from raymerge.executor import ExecOptions, connect, execute, match_spaces, zipit_stats
from raymerge.io.header import ST_DTYPES
from raymerge.io.reader import INDEX_FILE, ModelLayout, read_model
from raymerge.io.writer import index_json, make_sink, write_json, write_small
from raymerge.job import FAULT_ENV, JobContext, peak_rss
from raymerge.ledger import Ledger, plan_hash
from raymerge.manifest import build_table, write_manifest
from raymerge.plan import (
    DEFAULT_JOB_BYTES,
    DEFAULT_JOB_MEMORY,
    DEFAULT_SHARD_SIZE,
    MIN_PART_BYTES,
    Job,
    Plan,
    make_plan,
)
from raymerge.progress import Progress, fmt_bytes
from raymerge.storage import Location, redact_url, resolve, storage_retries
from raymerge.zipit.spaces import ZipLayout

RUN_FILE = ".raymerge/run.json"
DRIVER_FAULT_ENV = "RAYMERGE_FAULT_KILL_DRIVER_AFTER"  # chaos testing: SIGKILL after N jobs
SUCCESS = "_SUCCESS"


@dataclass
class RunOptions:
    shard_size: int = DEFAULT_SHARD_SIZE
    job_memory: int = DEFAULT_JOB_MEMORY
    job_bytes: int = DEFAULT_JOB_BYTES
    overwrite: bool = False
    allow_nonfinite: bool = False
    ledger_interval: float = 2.0  # seconds between ledger flushes (resume granularity)
    execution: ExecOptions = field(default_factory=ExecOptions)


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
class Claim:
    run_id: str
    resume: bool  # same config and job layout as the interrupted run in OUT: try to keep its work
    complete: dict[str, Any] | None  # _SUCCESS of an identical finished run


def _claim_output(out: Location, run_hash: str, layout: str, overwrite: bool) -> Claim:
    """Refuse an OUT that holds something else; record this run; say what may be resumed."""
    fs = out.fs
    try:
        if not out.is_local:
            bucket = fs.split_path(out.path)[0] if hasattr(fs, "split_path") else None
            if bucket and not fs.exists(bucket):
                raise OutputError(f"{out.url}: bucket {bucket!r} does not exist")
        exists = fs.exists(out.path)
        if exists and not fs.isdir(out.path):
            raise OutputError(f"{out.url}: exists and is not a folder")
        entries = fs.ls(out.path, detail=False) if exists else []
        run_path = out.child(RUN_FILE).path
        prev = json.loads(fs.cat_file(run_path)) if entries and fs.exists(run_path) else None
        if entries and not overwrite:
            if prev is None:
                raise OutputError(
                    f"{out.url}: is not empty and holds no raymerge run; choose an empty "
                    "folder or pass --overwrite"
                )
            if prev.get("config_hash") != run_hash:
                raise OutputError(
                    f"{out.url}: holds a run of a different config (hash {prev.get('config_hash')}"
                    f", this config {run_hash}); choose another folder or pass --overwrite"
                )
        success = out.child(SUCCESS).path
        same = bool(prev) and prev.get("config_hash") == run_hash and not overwrite
        if same and fs.exists(success):
            return Claim(prev.get("run_id", ""), False, json.loads(fs.cat_file(success)))
        if fs.exists(success):
            fs.rm(success)
        resume = same and prev.get("plan_hash") == layout
        run_id = uuid.uuid4().hex[:12]
        write_json(
            out,
            RUN_FILE,
            {
                "config_hash": run_hash,
                "plan_hash": layout,
                "run_id": run_id,
                "raymerge": __version__,
                "started": time.time(),
            },
        )
        return Claim(run_id, resume, None)
    except PermissionError as exc:
        raise OutputError(
            f"{out.url}: not writable ({exc.strerror or type(exc).__name__})"
        ) from None
    except OSError as exc:
        if isinstance(exc, (OutputError, InputError)):
            raise
        raise OutputError(f"{out.url}: cannot use as output: {exc}") from None


def run_merge(cfg: MergeConfig, out_url: str, opts: RunOptions) -> dict[str, Any]:
    """Merge ``cfg`` into ``out_url``; returns the run summary.

    Rerunning the same command resumes: an identical finished run is left as it is; an
    interrupted one keeps every job whose stored bytes still match the ledger and recomputes
    the rest.
    """
    t_start = time.perf_counter()
    driver_retries = storage_retries()
    out = resolve(out_url, cfg.storage_options)
    # all input validation happens here, before any tensor data is read
    plan, layouts = build_plan(cfg, opts, 0 if out.is_local else MIN_PART_BYTES)
    zipit = ZipStage.prepare(cfg, plan, layouts)  # reads and checks the calibration file, if any
    sink = make_sink(out, plan.shards, plan.jobs)
    layout = plan_hash(plan)
    claim = _claim_output(out, plan.config_hash, layout, opts.overwrite)
    if claim.complete is not None:
        summary = dict(claim.complete.get("summary", {}))
        summary.update(already_complete=True, wall_s=time.perf_counter() - t_start)
        return summary
    ledger = Ledger(out, layout, interval=opts.ledger_interval)
    records = ledger.load() if claim.resume else {}
    if not claim.resume:
        ledger.clear()
        sink.discard()
    started_ray = connect(opts.execution)
    try:
        sink.prepare(resume=claim.resume)
        headers = [len(s.header) for s in plan.shards]
        kept = sink.kept(plan.jobs, records, headers) if records else set()
        todo = [j for j in plan.jobs if j.id not in kept]
        progress = Progress(todo, enabled=opts.execution.progress)
        ctx = JobContext(
            inputs=tuple(lay.location for lay in layouts),
            method=plan.method,
            math_dtype="F64" if cfg.dtype in ("float64", "fp64", "double") else "F32",
            headers=tuple(s.header for s in plan.shards),
            sink=sink,
            allow_nonfinite=opts.allow_nonfinite,
            fault_marker=os.environ.get(FAULT_ENV) or None,
        )
        kill_after = int(os.environ.get(DRIVER_FAULT_ENV) or 0)

        def done(job: Job, res: dict[str, Any]) -> None:
            progress.update(job, res)
            ledger.record(res)
            if kill_after and len(ledger.recorded) >= kill_after:
                ledger.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # chaos testing: a driver crash mid-run

        external = zipit.run(opts.execution) if zipit and todo else None
        try:
            result = execute(
                todo, ctx, opts.execution, on_done=done, all_jobs=plan.jobs, external=external
            )
        finally:
            progress.close()
            ledger.flush()
        results = {j: dict(records[j], reused=True) for j in kept}
        results.update(result.results)
        sink.commit(results, plan.jobs)
        summary = _summary(plan, result, results, time.perf_counter() - t_start, claim.run_id)
        summary["reused_jobs"] = len(kept)
        if zipit:
            summary["zipit"] = zipit.info
        summary["storage_retries"] += storage_retries() - driver_retries  # the driver's own
        _finalize(cfg, out, plan, layouts, results, summary, claim.run_id)
        ledger.clear()
        summary["wall_s"] = time.perf_counter() - t_start
        return summary
    finally:
        if started_ray:
            import ray

            ray.shutdown()


@dataclass
class ZipStage:
    """ZipIt's statistics and matching stage, run on the cluster before the per-tensor jobs."""

    cfg: MergeConfig
    layout: ZipLayout
    models: list[ModelLayout]
    calibration: Any  # torch.Tensor of inputs, None for matcher: identity
    params: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(cls, cfg: MergeConfig, plan: Plan, layouts: list[ModelLayout]) -> ZipStage | None:
        zl = plan.zip_layout
        if zl is None:
            return None
        from raymerge.config import resolve_parameters
        from raymerge.zipit.gather import check_calibration, load_calibration

        refs = cfg.input_refs()
        models = [layouts[refs.index(m.model)] for m in cfg.models or []]
        params = resolve_parameters(cfg, "", 0.0)[0]
        x = None
        if params["matcher"] != "identity" and cfg.calibration is not None:
            loc = resolve(cfg.calibration.url, cfg.storage_options)
            x = load_calibration(loc, zl.arch, cfg.calibration.samples)
            shapes = {n: t.shape for n, t in models[0].tensors.items()}
            check_calibration(x, zl.arch, shapes, redact_url(loc.url))
        return cls(cfg, zl, models, x, params)

    def run(self, opts: ExecOptions) -> dict[str, list[dict[str, Any]]]:
        """Statistics (actors) -> matchings (one task per space) -> external job statistics."""
        from raymerge.zipit.gather import shard_ranges

        t0 = time.perf_counter()
        stats: dict[str, Any] = {}
        actors = 0
        cal = self.cfg.calibration
        if self.calibration is not None and cal is not None:
            shards = [
                s for s in shard_ranges(len(self.calibration), cal.batch_size, cal.shards) if s
            ]
            stats, actors = zipit_stats(
                self.layout.arch,
                [(m.location, m.tensors) for m in self.models],
                self.models[0].config,
                self.calibration,
                shards,
                [s.name for s in self.layout.spaces],
                opts,
            )
        t1 = time.perf_counter()
        p = self.params
        matchings = match_spaces(
            stats, list(self.layout.spaces), len(self.models), p["matcher"], p["alpha"], p["beta"]
        )
        external: dict[str, list[dict[str, Any]]] = {}
        within = 0
        for name, m in matchings.items():
            entry = {f"{name}/assign.{k}": a for k, a in enumerate(m.assign)}
            entry[f"{name}/sizes"] = m.sizes
            external[f"zipit:{name}"] = [entry]
            # features merged into a cluster that already holds one of the same model
            within += sum(int(a.numel() - a.unique().numel()) for a in m.assign)
        self.info = {
            "arch": self.layout.arch,
            "matcher": p["matcher"],
            "spaces": len(matchings),
            "samples": 0 if self.calibration is None else len(self.calibration),
            "actors": actors,
            "within_model_merges": within,
            "stats_s": t1 - t0,
            "match_s": time.perf_counter() - t1,
        }
        return external


def _summary(
    plan: Plan, result: Any, results: dict[int, dict[str, Any]], wall: float, run_id: str
) -> dict[str, Any]:
    # from storage, by the jobs and the statistics rounds (chunks kept in memory count once)
    read = sum(r["bytes_read"] for r in result.results.values()) + result.stats_bytes_read
    written = sum(s.size for s in plan.shards)
    return {
        "run_id": run_id,
        "method": plan.method,
        "tensors": len({p.name for p in plan.pieces}),
        "pieces": len(plan.pieces),
        "jobs": len(plan.jobs),
        "shards": len(plan.shards),
        "bytes_read": read,
        "bytes_written": written,
        "bytes_reused": sum(r.get("bytes_reused", 0) for r in result.results.values()),
        "kept_peak_bytes": result.kept_peak_bytes,
        "merge_s": result.seconds,
        "wall_s": wall,
        "read_gbps": read / result.seconds / 1e9 if result.seconds else 0.0,
        "write_gbps": written / result.seconds / 1e9 if result.seconds else 0.0,
        "peak_job_memory_planned": max((j.memory_bytes for j in plan.jobs), default=0),
        "peak_worker_rss": max((r.get("rss_peak", 0) for r in results.values()), default=0),
        "driver_rss": peak_rss(),
        "retries": result.retries,
        "storage_retries": result.stats_storage_retries
        + sum(r.get("storage_retries", 0) for r in result.results.values()),
        "nodes": len(result.nodes),
        "worker_processes": len({r.get("pid") for r in result.results.values()}),
    }


def _torch_dtype_name(st: str) -> str:
    return ST_DTYPES[st][0]  # torch's name of the dtype, e.g. "bfloat16"


def _finalize(
    cfg: MergeConfig,
    out: Location,
    plan: Plan,
    layouts: list[ModelLayout],
    results: dict[int, dict[str, Any]],
    summary: dict[str, Any],
    run_id: str,
) -> None:
    public = cfg.public_dict()
    fingerprints = [lay.fingerprint() for lay in layouts]
    metadata = {
        "raymerge_version": __version__,
        "config_hash": plan.config_hash,
        "run_id": run_id,
        "config": public,
        "inputs": fingerprints,
        "summary": summary,
        "shards": [
            {
                "name": s.name,
                "size": s.size,
                "header_len": len(s.header),
                "header_checksum": next(
                    r["header_checksum"]
                    for j in plan.jobs
                    if j.shard == s.index and j.part == 1
                    for r in [results[j.id]]
                ),
            }
            for s in plan.shards
        ],
    }
    write_manifest(out, build_table(plan, results, metadata))
    ref = layouts[0]  # the reference model: config.json, tokenizer, generation config
    for name in ref.side_files:
        data = ref.location.fs.cat_file(ref.location.child(name).path)
        if name == "config.json" and plan.tensor_dtypes:
            conf = json.loads(data)
            dtypes = set(plan.tensor_dtypes.values())
            if len(dtypes) == 1:
                conf["torch_dtype"] = _torch_dtype_name(dtypes.pop())
            if plan.num_hidden_layers is not None:
                conf["num_hidden_layers"] = plan.num_hidden_layers
            data = (json.dumps(conf, indent=2) + "\n").encode()
        write_small(out, name, data)
    write_small(out, "README.md", model_card(public, fingerprints, summary).encode())
    write_json(out, INDEX_FILE, index_json(plan.shards))
    write_json(
        out, SUCCESS, {"run_id": run_id, "config_hash": plan.config_hash, "summary": summary}
    )


def model_card(
    config: dict[str, Any], inputs: list[dict[str, Any]], summary: dict[str, Any]
) -> str:
    import yaml

    base = config.get("base_model")
    lines = ["---", "library_name: transformers", "tags:", "- merge", "- raymerge"]
    if base and "://" not in str(base):
        lines.append(f"base_model: {base}")
    lines += [
        "---",
        "",
        "# Merged model",
        "",
        f"Produced by raymerge {__version__} with the `{config.get('merge_method')}` method.",
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
        "## Inputs",
        "",
    ]
    for fp in inputs:
        files = ", ".join(
            f"{name} ({info.get('size')} B"
            + (f", etag {info['etag']}" if "etag" in info else "")
            + ")"
            for name, info in fp["files"].items()
        )
        lines.append(f"- `{redact_url(fp['model'])}`: {files}")
    lines += [
        "",
        "## Run",
        "",
        f"{summary['tensors']} tensors, {fmt_bytes(summary['bytes_written'])} written in "
        f"{summary['merge_s']:.1f} s ({summary['jobs']} jobs, {summary['retries']} retries).",
        "",
    ]
    return "\n".join(lines)
