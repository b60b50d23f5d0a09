"""Cost model: predicted wall time of a Llama-3-70B merge on N Ray nodes, from the real plan.

Why: nobody here has a 16-node cluster and 420 GB of checkpoints at hand, but the planner is
header-only and the per-job costs are measurable on one machine. Combining the two says how
many nodes a 70B merge needs before storage bandwidth, not compute, is the limit, and what wall
time to expect.

Steps:

1. **Plan** a Llama-3-70B-shaped merge (hidden 8192, 80 layers, vocab 128256; 723 tensors,
   ~141 GB of bf16 per model) with the real planner (``raymerge.pipeline.build_plan``, planner
   defaults, S3 output so parts >= 5 MiB) over fabricated checkpoints: real safetensors headers
   in sparse files in a temp dir, no data (as ``tests/test_plan.py`` does). Methods (``--methods``):
   ``linear`` (0.5/0.5 of two fine-tunes: reads 2 models) and ``ties`` (base + 2 fine-tunes,
   weight 0.5, density 0.2: reads 3 models).
2. **Per-worker rates** (one CPU, one job at a time), from the flags, else from ``--manifest``
   files, else measured by a small real merge here (``--calib-scale``, 1 worker, one warm-up, the
   run of median merge_s of ``--calib-repeats``):
   read = input bytes / read_s; write = output bytes / write_s (both summed over jobs); compute =
   output bytes per second of compute_s, per method, counted for a whole (unchunked) tensor,
   whose job also computes the method's whole-tensor statistics. For a chunked tensor those
   statistics run as separate tasks before the jobs (one task per chunk and round; the first
   round keeps the chunk's bytes in the object store, so later rounds and the merge job read
   nothing from storage; rows marked "(re-read)" model ``--keep-bytes 0``); their share of
   the compute time is measured by a single-thread micro-benchmark
   of ``piece_stats`` vs the kernel (``--stats-ratios`` overrides it). The per-task fixed cost
   (``--task-overhead-s``) defaults to the calibration run's merge_s x workers minus its
   modelled task time, per task (``--manifest-workers`` for a manifest's run; give manifests of
   warm runs, else Ray's worker start-up counts as overhead).
3. **Schedule**: each phase (statistics round 1, round 2, ..., then the jobs; each waits for the
   previous one, as in ``executor.execute``) is distributed greedily, longest task first, over
   N nodes, each task going to the node whose predicted time grows least. A node's time is
   max(bytes it reads / ``--node-gbps``, bytes it writes / ``--node-write-gbps``, worker
   seconds of its tasks / ``--cpus-per-node``, its longest task), where a task's worker seconds
   = overhead + read bytes / read rate + output bytes / compute rate + output bytes / write rate
   (a job reads, then merges, then writes). Wall = ``--startup-s`` + the sum over phases of the
   slowest node. "bound" names the larger of the storage terms (storage) and the worker term
   (compute) at the slowest node of the longest phase.

Assumptions (printed too): a node's CPUs run one job each; node memory admits that many jobs
(ties jobs plan up to 1 GiB); the store serves every node at ``--node-gbps`` at once (no shared
limit at the store); per-worker rates measured on local page-cache reads also hold for S3 ranged
GETs, unless given; LPT placement is optimistic compared with Ray's in-order dynamic
dispatch, which matters little with thousands of tasks; start-up (driver imports, Ray connect,
worker start, planning, commit) is one fixed term.

**Check against a measured run**: the calibration run's plan is predicted the same way (1 node,
no storage limit: the page cache) with 1 worker (in-sample: its own rates) and with 2 workers
(out of sample: a separate measured run), and printed as predicted vs measured merge_s and wall.

The last line printed is one JSON object holding every number.

``--zipit`` predicts a 70B *zip* (ZipIt: streamed statistics, matching, apply) on N GPU nodes
instead (:mod:`zipit_cost`; its flags ``--zip-nodes``, ``--gpus-per-node``, ``--actors-per-node``,
``--samples``, ``--tokens``, ``--gpu-fp64-tflops``, ``--gpu-step-ms``, ... are listed by
``--help``), printing its assumptions.

Usage::

    python benchmarks/cost_model.py [--nodes 1,2,4,8,16] [--cpus-per-node 8] [--node-gbps 1.25]
        [--node-write-gbps G] [--startup-s 5] [--methods linear,ties]
        [--read-gbps-per-worker R] [--write-gbps-per-worker W]
        [--compute-gbps-per-worker linear=X,ties=Y] [--manifest PATH ... [--manifest-workers K]]
        [--calib-scale medium] [--calib-repeats 3] [--workdir /tmp/raymerge-costmodel]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zipit_cost
from _common import (
    SCALES,
    build_family,
    clear_output,
    jobs_from_table,
    merge_config,
    model_bytes,
)

MODEL_METHODS = ("linear", "ties")


@dataclass(frozen=True)
class PieceRec:
    """What the model needs of one planned piece."""

    job: int
    read: int  # input bytes of the piece (all its sources)
    out: int  # output bytes
    chunked: bool
    rounds: int  # whole-tensor statistics rounds of its method


@dataclass(frozen=True)
class Task:
    read: int
    write: int
    seconds: float


@dataclass
class Rates:
    read_bps: float  # per worker
    write_bps: float
    compute_bps: dict[str, float]  # per method: output bytes / s, statistics included
    stats_ratios: dict[str, list[float]]  # per method: round r compute / kernel compute
    task_overhead_s: float
    source: str


# --------------------------------------------------------------------------- 70B plan


def fabricate_70b(folder: Path, n_shards: int = 30) -> int:
    """Sparse files with real headers: 723 tensors, ~141 GB per model, no data written."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.fabricate
    from tests.fabricate import fabricate_checkpoint, llama3_70b_config

    return fabricate_checkpoint(str(folder), llama3_70b_config(), n_shards)


def plan_pieces(plan: Any) -> list[PieceRec]:
    return [
        PieceRec(j.id, sum(s.end - s.start for s in p.sources), p.nbytes, p.n_chunks > 1, p.rounds)
        for j in plan.jobs
        for p in j.pieces
    ]


def plan_70b(methods: list[str], density: float) -> dict[str, dict[str, Any]]:
    """Plan each method over fabricated 70B checkpoints; pieces and plan numbers per method."""
    from raymerge.config import load_config
    from raymerge.options import MIN_PART_BYTES, RunOptions
    from raymerge.pipeline import build_plan

    tmp = Path(tempfile.mkdtemp(prefix="raymerge-70b-"))
    try:
        size = 0
        for m in ("base", "ft1", "ft2"):
            size = fabricate_70b(tmp / m)
        refs = {m: str(tmp / m) for m in ("base", "ft1", "ft2")}
        out = {}
        for method in methods:
            t0 = time.perf_counter()
            plan, _ = build_plan(
                load_config(merge_config(method, refs, density)), RunOptions(), MIN_PART_BYTES
            )
            plan_s = time.perf_counter() - t0
            s = plan.summary()
            pieces = plan_pieces(plan)
            out[method] = {
                "pieces": pieces,
                "info": {
                    "model_bytes": size,
                    "tensors": s["tensors"],
                    "pieces": s["pieces"],
                    "jobs": s["jobs"],
                    "chunked_tensors": s["chunked_tensors"],
                    "stats_tasks": sum(p.rounds for p in pieces if p.chunked),
                    "bytes_read": s["bytes_read"],
                    "bytes_written": s["bytes_written"],
                    "peak_job_memory": s["peak_job_memory_bytes"],
                    "plan_s": plan_s,
                },
            }
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the model


def tasks_of(
    pieces: list[PieceRec], method: str, rates: Rates, kept: bool = False
) -> list[list[Task]]:
    """Phases of tasks: one per statistics round (chunked pieces), then the jobs. ``kept``: the
    first round's reads of a chunk are kept in the object store for the later rounds and its
    merge job (remote inputs; ``executor._Flow``), which then read nothing from storage."""
    ratios = rates.stats_ratios.get(method, [])
    share = 1.0 + sum(ratios)  # compute of a whole tensor = kernel * share
    per_out = 1.0 / rates.compute_bps[method]  # s per output byte, statistics included
    kernel = per_out / share
    rounds = max((p.rounds for p in pieces if p.chunked), default=0)
    phases: list[list[Task]] = []
    for r in range(rounds):
        ratio = ratios[r] if r < len(ratios) else (ratios[-1] if ratios else 0.0)
        phase = []
        for p in pieces:
            if p.chunked and p.rounds > r:
                read = 0 if kept and r else p.read
                seconds = rates.task_overhead_s + read / rates.read_bps + p.out * kernel * ratio
                phase.append(Task(read, 0, seconds))
        phases.append(phase)
    jobs: dict[int, list[PieceRec]] = {}
    for p in pieces:
        jobs.setdefault(p.job, []).append(p)
    job_tasks = []
    for ps in jobs.values():
        read = sum(0 if kept and p.chunked and p.rounds else p.read for p in ps)
        out = sum(p.out for p in ps)
        compute = sum(p.out * (kernel if p.chunked and p.rounds else per_out) for p in ps)
        seconds = rates.task_overhead_s + read / rates.read_bps + compute + out / rates.write_bps
        job_tasks.append(Task(read, out, seconds))
    phases.append(job_tasks)
    return phases


def schedule(
    tasks: list[Task], nodes: int, cpus: int, read_gbps: float, write_gbps: float
) -> dict[str, Any]:
    """Greedy LPT over nodes; the slowest node's time and what bounds it."""
    rbw = read_gbps * 1e9 if read_gbps > 0 else math.inf
    wbw = write_gbps * 1e9 if write_gbps > 0 else math.inf
    rd = [0] * nodes
    wr = [0] * nodes
    sec = [0.0] * nodes
    longest = [0.0] * nodes

    def node_time(k: int, t: Task | None = None) -> float:
        r, w, s, lg = rd[k], wr[k], sec[k], longest[k]
        if t is not None:
            r, w, s, lg = r + t.read, w + t.write, s + t.seconds, max(lg, t.seconds)
        return max(r / rbw, w / wbw, s / cpus, lg)

    for t in sorted(tasks, key=lambda t: t.seconds, reverse=True):
        k = min(range(nodes), key=lambda n: node_time(n, t))
        rd[k] += t.read
        wr[k] += t.write
        sec[k] += t.seconds
        longest[k] = max(longest[k], t.seconds)
    slow = max(range(nodes), key=node_time) if tasks else 0
    storage = max(rd[slow] / rbw, wr[slow] / wbw)
    worker = max(sec[slow] / cpus, longest[slow])
    return {
        "s": node_time(slow) if tasks else 0.0,
        "storage_s": storage,
        "worker_s": worker,
        "bound": "storage" if storage >= worker else "compute",
        "tasks": len(tasks),
    }


def predict(
    phases: list[list[Task]],
    nodes: int,
    cpus: int,
    read_gbps: float,
    write_gbps: float,
    startup_s: float,
) -> dict[str, Any]:
    per = [schedule(ts, nodes, cpus, read_gbps, write_gbps) for ts in phases]
    longest = max(per, key=lambda p: p["s"])
    merge = sum(p["s"] for p in per)
    return {
        "nodes": nodes,
        "wall_s": startup_s + merge,
        "merge_s": merge,
        "bound": longest["bound"],
        "storage_s": sum(p["storage_s"] for p in per),
        "worker_s": sum(p["worker_s"] for p in per),
        "phases": [{k: p[k] for k in ("s", "bound", "tasks")} for p in per],
    }


# --------------------------------------------------------------------------- calibration


def manifest_pieces(table: Any) -> list[PieceRec]:
    from raymerge.methods import get_method

    recs = []
    for row in table.select(
        ["job", "sources", "out_start", "out_end", "n_chunks", "method", "params"]
    ).to_pylist():
        params = json.loads(row["params"])
        rounds = len(get_method(row["method"]).stat_rounds(params["method"], params["models"]))
        recs.append(
            PieceRec(
                row["job"],
                sum(s["end"] - s["start"] for s in row["sources"]),
                row["out_end"] - row["out_start"],
                row["n_chunks"] > 1,
                rounds,
            )
        )
    return recs


def stats_ratios(method: str, density: float, numel: int = 1 << 22) -> list[float]:
    """Single-thread compute time of each statistics round / the kernel alone (bf16 inputs,
    float32 math, base + 2 models), min of 3."""
    import torch

    from raymerge.methods import get_method, merge_piece, piece_stats
    from raymerge.methods.base import PieceInfo

    m = get_method(method)
    wide = {p.name: p.default for p in m.params if p.scope == "global"}
    per = [{p.name: p.default for p in m.params if p.scope == "model"} for _ in range(2)]
    for d in per:
        d["weight"] = 0.5
        if "density" in d:
            d["density"] = density
    rounds = m.stat_rounds(wide, per)
    if not rounds:
        return []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        shape = (numel // 4096, 4096)
        base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
        xs = [
            (base.float() + torch.randn(shape, generator=g) * 0.002).to(torch.bfloat16)
            for _ in range(2)
        ]
        info = PieceInfo.whole("t", shape)
        out = torch.empty(shape, dtype=torch.bfloat16)

        def best(fn: Any) -> float:
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return min(ts)

        stats: list[Any] = []
        t_rounds = []
        for _ in rounds:
            prev = list(stats)
            t_rounds.append(best(lambda p=prev: piece_stats(m, info, base, xs, per, wide, p)))
            stats.append(piece_stats(m, info, base, xs, per, wide, prev))
        t_kernel = best(lambda: merge_piece(m, info, base, xs, per, wide, stats, out=out))
    finally:
        torch.set_num_threads(threads)
    return [t / t_kernel for t in t_rounds]


def rates_from_runs(
    runs: dict[str, dict[str, Any]], ratios: dict[str, list[float]], source: str
) -> Rates:
    """Per-worker rates from 1-worker runs (or manifests): jobs' bytes over their seconds."""
    read_b = read_s = write_b = write_s = 0.0
    compute: dict[str, float] = {}
    for method, run in runs.items():
        jobs, pieces = run["jobs"], run["pieces"]
        read_b += sum(j["bytes_read"] for j in jobs)
        read_s += sum(j["read_s"] for j in jobs)
        write_b += sum(j["bytes_written"] for j in jobs)
        write_s += sum(j["write_s"] for j in jobs)
        share = 1.0 + sum(ratios.get(method, []))
        # measured compute = kernel * (out of unchunked pieces * share + out of chunked ones)
        weighted = sum(p.out * (1.0 if p.chunked and p.rounds else share) for p in pieces)
        kernel = sum(j["compute_s"] for j in jobs) / weighted
        compute[method] = 1.0 / (kernel * share)
    return Rates(read_b / read_s, write_b / write_s, compute, ratios, 0.0, source)


def task_overhead(runs: dict[str, dict[str, Any]], rates: Rates) -> float:
    """merge_s x workers of the runs minus their modelled task time, per task (>= 0)."""
    gap = n = 0.0
    for method, run in runs.items():
        phases = tasks_of(run["pieces"], method, rates)
        workers = run.get("workers", 1)
        gap += run["merge_s"] * workers - sum(t.seconds for ph in phases for t in ph)
        n += sum(len(ph) for ph in phases)
    return max(0.0, gap / n) if n else 0.0


def calibrate(
    args: argparse.Namespace, methods: list[str]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Small real merges on a local Ray: per method, 1 worker and 2 workers (after a warm-up).
    Returns {method: {"1": run, "2": run}} with manifest jobs and pieces, and run info."""
    import ray

    from raymerge.config import load_config
    from raymerge.manifest import read_manifest
    from raymerge.options import ExecOptions, RunOptions
    from raymerge.pipeline import run_merge
    from raymerge.storage import resolve

    scale = SCALES[args.calib_scale]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    models = build_family(workdir / f"models-{args.calib_scale}", scale["model"])
    refs = {n: str(p) for n, p in models.items()}
    kw = {k: scale[k] for k in ("job_bytes", "shard_size") if scale[k]}
    runs: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods}
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        for method in methods:
            cfg = load_config(merge_config(method, refs, args.density))
            out = str(workdir / f"out-{method}")
            for workers in (1, 2):
                opts = RunOptions(
                    overwrite=True, execution=ExecOptions(in_flight=workers, progress=False), **kw
                )
                measured = []
                for k in range(args.calib_repeats + 1):  # a warm-up, then the measured runs
                    clear_output(out)
                    t0 = time.perf_counter()
                    summary = run_merge(cfg, out, opts)
                    wall = time.perf_counter() - t0
                    if k == 0:
                        continue
                    if summary["retries"]:
                        print(f"warning: {summary['retries']} retries in the calibration run")
                    table, _ = read_manifest(resolve(out))
                    measured.append(
                        {
                            "wall_s": wall,
                            "merge_s": summary["merge_s"],
                            "workers": workers,
                            "jobs": jobs_from_table(table),
                            "pieces": manifest_pieces(table),
                        }
                    )
                measured.sort(key=lambda r: r["merge_s"])
                run = measured[(len(measured) - 1) // 2]  # the run of median merge_s
                run["merges_s"] = [r["merge_s"] for r in measured]
                runs[method][str(workers)] = run
                print(
                    f"calibration: {method}, {workers} worker(s): wall {run['wall_s']:.2f} s, "
                    f"merge {run['merge_s']:.2f} s (median of {len(measured)}), "
                    f"{summary['jobs']} jobs",
                    flush=True,
                )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
    info = {
        "scale": args.calib_scale,
        "model": scale["model"],
        "model_bytes": model_bytes(models["base"]),
        **kw,
    }
    return runs, info


def load_manifests(paths: list[str], workers: int) -> dict[str, dict[str, Any]]:
    """A run per method from given manifest.parquet files (local paths or URLs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs

    runs: dict[str, dict[str, Any]] = {}
    for path in paths:
        fs, p = url_to_fs(path)
        table = pq.read_table(pa.BufferReader(fs.cat_file(p)))
        meta = json.loads((table.schema.metadata or {}).get(b"summary", b"{}"))
        jobs = jobs_from_table(table)
        method = jobs[0]["method"]
        runs[method] = {
            "wall_s": meta.get("wall_s"),
            "merge_s": meta.get("merge_s"),
            "nodes": meta.get("nodes"),
            "jobs": jobs,
            "pieces": manifest_pieces(table),
            "path": path,
            "workers": workers,
        }
    return runs


# --------------------------------------------------------------------------- main


def parse_compute(text: str | None, methods: list[str]) -> dict[str, float]:
    if not text:
        return {}
    if "=" not in text:
        return dict.fromkeys(methods, float(text))
    out = {}
    for part in text.split(","):
        k, v = part.split("=")
        out[k.strip()] = float(v)
    return out


def pct(a: float, b: float) -> float:
    return 100.0 * (a - b) / b if b else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2,4,8,16", help="node counts to predict")
    ap.add_argument("--cpus-per-node", type=int, default=8, help="workers (CPUs) per node")
    ap.add_argument(
        "--node-gbps",
        type=float,
        default=1.25,
        help="per-node storage read bandwidth, GB/s (1.25 = 10 Gb/s)",
    )
    ap.add_argument(
        "--node-write-gbps",
        type=float,
        default=None,
        help="per-node write bandwidth, GB/s (default: --node-gbps)",
    )
    ap.add_argument("--startup-s", type=float, default=5.0, help="fixed start-up term, s")
    ap.add_argument("--methods", default="linear,ties", help="comma list of linear, ties")
    ap.add_argument("--density", type=float, default=0.2, help="ties density")
    ap.add_argument("--read-gbps-per-worker", type=float, default=None)
    ap.add_argument("--write-gbps-per-worker", type=float, default=None)
    ap.add_argument(
        "--compute-gbps-per-worker",
        default=None,
        help="output GB/s per worker: one number, or linear=X,ties=Y",
    )
    ap.add_argument(
        "--stats-ratios",
        default=None,
        help="ties statistics rounds' compute / kernel compute, e.g. 0.5,0.5",
    )
    ap.add_argument(
        "--task-overhead-s",
        type=float,
        default=None,
        help="fixed seconds per task (default: from the calibration run, else 0)",
    )
    ap.add_argument(
        "--manifest",
        action="append",
        default=[],
        help="take rates from this manifest.parquet (repeat for several methods)",
    )
    ap.add_argument(
        "--manifest-workers",
        type=int,
        default=1,
        help="workers (concurrent jobs) of the --manifest runs, for the per-task overhead",
    )
    ap.add_argument(
        "--calib-scale",
        choices=tuple(SCALES),
        default="medium",
        help="family of the calibration run",
    )
    ap.add_argument(
        "--calib-repeats", type=int, default=3, help="timed calibration runs (median merge_s)"
    )
    ap.add_argument(
        "--no-calibrate",
        action="store_true",
        help="no local run (all rates from flags or manifests)",
    )
    ap.add_argument("--workdir", default="/tmp/raymerge-costmodel")
    ap.add_argument("--zipit", action="store_true", help="predict a 70B ZipIt zip instead")
    zipit_cost.add_flags(ap)
    args = ap.parse_args(argv)
    if args.zipit:
        zipit_cost.run(args)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(MODEL_METHODS):
        ap.error(f"unknown method(s) {', '.join(sorted(unknown))}; valid: linear, ties")
    node_counts = [int(n) for n in args.nodes.split(",")]
    write_gbps = args.node_write_gbps if args.node_write_gbps is not None else args.node_gbps
    flags_compute = parse_compute(args.compute_gbps_per_worker, methods)

    need_run = not (
        args.read_gbps_per_worker
        and args.write_gbps_per_worker
        and all(m in flags_compute for m in methods)
    )
    if need_run and args.no_calibrate and not args.manifest:
        ap.error("--no-calibrate needs --read/--write-gbps-per-worker and compute for each method")

    t0 = time.perf_counter()
    plans = plan_70b(methods, args.density)
    print(
        f"plan: Llama-3-70B-shaped, {', '.join(methods)} planned in "
        f"{time.perf_counter() - t0:.1f} s (fabrication included)"
    )

    ratios: dict[str, list[float]] = {}
    for m in methods:
        if args.stats_ratios and m == "ties":
            ratios[m] = [float(x) for x in args.stats_ratios.split(",")]
        else:
            ratios[m] = stats_ratios(m, args.density)
    print(f"statistics rounds / kernel compute: {ratios}")

    runs: dict[str, dict[str, dict[str, Any]]] = {}
    calib_info: dict[str, Any] = {}
    source = "flags"
    base_runs: dict[str, dict[str, Any]] = {}
    if args.manifest:
        base_runs = load_manifests(args.manifest, args.manifest_workers)
        source = "manifest"
    elif need_run and not args.no_calibrate:
        runs, calib_info = calibrate(args, methods)
        base_runs = {m: r["1"] for m, r in runs.items()}
        source = "measured (1-worker calibration run)"
    measured = rates_from_runs(base_runs, ratios, source) if base_runs else None
    compute = dict(measured.compute_bps) if measured else {}
    compute.update({k: v * 1e9 for k, v in flags_compute.items()})
    if missing := [m for m in methods if m not in compute]:
        ap.error(f"no compute rate for {', '.join(missing)} (flag or manifest)")
    if args.read_gbps_per_worker:
        read_bps = args.read_gbps_per_worker * 1e9
    else:
        assert measured is not None
        read_bps = measured.read_bps
    if args.write_gbps_per_worker:
        write_bps = args.write_gbps_per_worker * 1e9
    else:
        assert measured is not None
        write_bps = measured.write_bps
    flagged = args.read_gbps_per_worker or args.write_gbps_per_worker or flags_compute
    rates = Rates(
        read_bps, write_bps, compute, ratios, 0.0, source + (" + flags" if flagged else "")
    )
    if args.task_overhead_s is not None:
        rates.task_overhead_s = args.task_overhead_s
    elif base_runs and all(r.get("merge_s") for r in base_runs.values()):
        rates.task_overhead_s = task_overhead(base_runs, rates)

    assumptions = [
        "each node runs --cpus-per-node jobs at once and has memory for them",
        f"each node reads at {args.node_gbps} GB/s and writes at {write_gbps} GB/s, "
        "all nodes at once (the store has no shared limit)",
        f"per-worker rates ({rates.source}) hold on the cluster",
        "tasks placed longest first on the least-loaded node (optimistic vs Ray's dispatch)",
        "statistics rounds of chunked tensors run as separate phases (the executor pipelines "
        "them tensor by tensor: pessimistic); their first round's reads are kept in the object "
        "store for the later rounds and the merge (an '(re-read)' row: --keep-bytes 0)",
        f"fixed start-up {args.startup_s} s; {rates.task_overhead_s * 1e3:.1f} ms per task",
    ]
    report: dict[str, Any] = {
        "assumptions": assumptions,
        "rates": {
            "source": rates.source,
            "read_gbps_per_worker": rates.read_bps / 1e9,
            "write_gbps_per_worker": rates.write_bps / 1e9,
            "compute_gbps_per_worker": {m: v / 1e9 for m, v in rates.compute_bps.items()},
            "stats_ratios": ratios,
            "task_overhead_s": rates.task_overhead_s,
        },
        "cluster": {
            "cpus_per_node": args.cpus_per_node,
            "node_gbps": args.node_gbps,
            "node_write_gbps": write_gbps,
            "startup_s": args.startup_s,
        },
        "plan_70b": {m: p["info"] for m, p in plans.items()},
        "predictions": {},
    }

    print("assumptions:\n  " + "\n  ".join(assumptions))
    print(
        f"per worker: read {rates.read_bps / 1e9:.2f} GB/s, write {rates.write_bps / 1e9:.2f} "
        "GB/s, compute (output) "
        + ", ".join(f"{m} {v / 1e9:.3f} GB/s" for m, v in rates.compute_bps.items())
    )
    variants = [(m, m, True) for m in methods]
    variants += [(m, f"{m} (re-read)", False) for m in methods if plans[m]["info"]["stats_tasks"]]
    for m, label, kept in variants:
        info = plans[m]["info"]
        phases = tasks_of(plans[m]["pieces"], m, rates, kept=kept)
        rows = [
            predict(phases, n, args.cpus_per_node, args.node_gbps, write_gbps, args.startup_s)
            for n in node_counts
        ]
        for r in rows:
            r["input_gbps"] = info["bytes_read"] / r["wall_s"] / 1e9
        report["predictions"][label] = rows
        storage = sum(t.read for ph in phases for t in ph)
        print(
            f"\n{label}: {info['jobs']} jobs + {info['stats_tasks']} statistics tasks, "
            f"reads {storage / 1e9:.0f} GB from storage (models: {info['bytes_read'] / 1e9:.0f} "
            f"GB), writes {info['bytes_written'] / 1e9:.0f} GB"
        )
        print(
            f"{'nodes':>5}  {'wall s':>8}  {'bound':>7}  {'GB/s':>6}  {'storage s':>9}  "
            f"{'worker s':>8}"
        )
        for r in rows:
            print(
                f"{r['nodes']:>5}  {r['wall_s']:>8.1f}  {r['bound']:>7}  {r['input_gbps']:>6.2f}"
                f"  {r['storage_s']:>9.1f}  {r['worker_s']:>8.1f}"
            )

    if runs:
        check: dict[str, Any] = {}
        print("\nmodel vs measured (calibration family, 1 node, page cache: no storage limit)")
        print(
            f"{'method':<8} {'workers':>7}  {'pred merge':>10}  {'meas merge':>10}  "
            f"{'err %':>6}  {'pred wall':>9}  {'meas wall':>9}  {'err %':>6}"
        )
        for m, by_workers in runs.items():
            one = by_workers["1"]
            startup = one["wall_s"] - one["merge_s"]
            for w, run in by_workers.items():
                phases = tasks_of(run["pieces"], m, rates)
                p = predict(phases, 1, int(w), 0.0, 0.0, startup)
                row = {
                    "workers": int(w),
                    "sample": "in" if w == "1" else "out",
                    "predicted_merge_s": p["merge_s"],
                    "measured_merge_s": run["merge_s"],
                    "merge_error_pct": pct(p["merge_s"], run["merge_s"]),
                    "predicted_wall_s": p["wall_s"],
                    "measured_wall_s": run["wall_s"],
                    "wall_error_pct": pct(p["wall_s"], run["wall_s"]),
                }
                check.setdefault(m, {})[w] = row
                print(
                    f"{m:<8} {w:>7}  {p['merge_s']:>10.2f}  {run['merge_s']:>10.2f}  "
                    f"{row['merge_error_pct']:>6.1f}  {p['wall_s']:>9.2f}  {run['wall_s']:>9.2f}"
                    f"  {row['wall_error_pct']:>6.1f}"
                )
        report["validation"] = check
        report["calibration"] = calib_info
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
