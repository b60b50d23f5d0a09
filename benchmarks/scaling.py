"""Scaling benchmark: the same merge on 1 vs several workers, and on 1 vs several Ray nodes.

Why: raymerge's claim is that a merge is a bag of independent jobs (each range-reads its inputs
and writes its own output bytes), so adding workers or nodes should divide the merge time until
storage or the scheduler is the limit. This measures how close it gets, and where the time goes.

What one invocation measures, for every method in ``--methods`` (default TIES, density 0.2, over
base + 2 fine-tunes, and linear 0.5/0.5 of the two fine-tunes):

* **local** (inputs and output on the local disk): one in-process Ray (``ray.init(address=
  "local", num_cpus=--cpus)``, started and shut down by this script). "k workers" is
  ``ExecOptions(in_flight=k)``: the executor never has more than ``in_flight`` tasks submitted
  (``executor._Runner.run`` submits only while ``len(pending) < limit``) and each task holds
  one CPU, so at most k jobs run at once. k = 1 and ``--workers``.
* **cluster** (inputs and output on a local S3 endpoint, moto's server in a child process: the
  store every node shares): ``ray.cluster_utils.Cluster`` with a head of 0 CPUs and worker nodes
  of 1 CPU each; first 1 worker node, then nodes are added up to ``--nodes``. The executor's
  default ``in_flight`` (2 x the cluster's CPUs). All simulated nodes share this machine's cores,
  memory bandwidth and the one moto process: a speed-up beyond the machine's cores is not
  expected, and the S3 endpoint itself may be the bottleneck.

Each configuration: one untimed warm-up run (Ray workers started, torch imported), then
``--repeats`` timed runs of ``run_merge`` called in this process (already connected, so no Ray
start-up is timed), each into an emptied output folder; the median is reported. Per
configuration: wall time (``run_merge`` call: headers, planning, jobs, commit, manifest),
``merge_s`` (the jobs phase, raymerge's own summary), speed-up vs 1 worker / 1 node (wall and
merge_s), and from the median run's ``manifest.parquet``: sum and mean per job of read_s,
compute_s, write_s, scheduling overhead = merge_s * workers - sum(read + compute + write), and
jobs per node.

The cluster part's inputs and output are remote, so each CPU runs two jobs (the executor's
default for network-bound jobs) and the scheduling overhead counts 2 job slots per node.

``--scale small`` (hidden 256, 4 layers, ~8 MB per model, small jobs) is for development;
``--scale bench`` is throughput.py's 267M family (~518 MB per model) with the planner's
default job and shard sizes. Run it on a quiet machine: the timings are only as good as the CPU
time the benchmark gets.

The last line printed is one JSON object holding every number.

Usage::

    python benchmarks/scaling.py [--scale small|bench] [--methods ties,linear] [--repeats 3]
        [--workers 2] [--nodes 2] [--cpus 2] [--workdir /tmp/raymerge-scaling]
        [--skip-local] [--skip-cluster]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    METHODS,
    SCALES,
    LocalS3,
    breakdown,
    build_family,
    clear_output,
    manifest_jobs,
    median,
    merge_config,
    model_bytes,
)

BUCKET = "raymerge-scaling"


def run_options(scale: dict[str, Any], in_flight: int | None, args: argparse.Namespace) -> Any:
    from raymerge.options import ExecOptions, RunOptions

    kw: dict[str, Any] = {}
    job_bytes = args.job_bytes or scale["job_bytes"]
    shard_size = args.shard_size or scale["shard_size"]
    if job_bytes:
        kw["job_bytes"] = job_bytes
    if shard_size:
        kw["shard_size"] = shard_size
    return RunOptions(
        overwrite=True, execution=ExecOptions(in_flight=in_flight, progress=False), **kw
    )


def measure(
    label: str,
    cfg: Any,
    out: str,
    storage_options: dict[str, Any] | None,
    opts: Any,
    workers: int,
    repeats: int,
) -> dict[str, Any]:
    """One warm-up, then ``repeats`` timed runs; the median and the median run's breakdown."""
    from raymerge.pipeline import run_merge

    runs = []
    for k in range(repeats + 1):
        clear_output(out, storage_options)
        t0 = time.perf_counter()
        summary = run_merge(cfg, out, opts)
        wall = time.perf_counter() - t0
        if k == 0:
            print(f"  {label}: warm-up {wall:.2f} s", flush=True)
            continue
        jobs = manifest_jobs(out, storage_options)
        runs.append({"wall_s": wall, "summary": summary, "jobs": jobs})
        print(
            f"  {label}: run {k}/{repeats} {wall:.2f} s (merge {summary['merge_s']:.2f} s, "
            f"{summary['jobs']} jobs)",
            flush=True,
        )
    runs.sort(key=lambda r: r["wall_s"])
    mid = runs[(len(runs) - 1) // 2]  # the median run (the lower one for an even count)
    s = mid["summary"]
    result = {
        "workers": workers,
        "wall_s": median([r["wall_s"] for r in runs]),
        "walls_s": [r["wall_s"] for r in runs],
        "merge_s": median([r["summary"]["merge_s"] for r in runs]),
        "merges_s": [r["summary"]["merge_s"] for r in runs],
        "nodes_used": s["nodes"],
        "retries": sum(r["summary"]["retries"] for r in runs),
        "peak_worker_rss": max(r["summary"]["peak_worker_rss"] for r in runs),
        "input_gbps": s["bytes_read"] / median([r["wall_s"] for r in runs]) / 1e9,
        "storage_bytes_read": s["bytes_read"],  # from storage, statistics rounds included
        "bytes_reused": s.get("bytes_reused", 0),  # from the object store instead
        "kept_peak_bytes": s.get("kept_peak_bytes", 0),
        **breakdown(mid["jobs"], s["merge_s"], workers),
    }
    return result


def add_speedups(rows: dict[str, dict[str, Any]]) -> None:
    ref = rows[min(rows, key=int)]
    for r in rows.values():
        r["speedup_wall"] = ref["wall_s"] / r["wall_s"]
        r["speedup_merge"] = ref["merge_s"] / r["merge_s"]
        r["efficiency_merge"] = r["speedup_merge"] / (r["workers"] / ref["workers"])


def local_part(
    args: argparse.Namespace,
    scale: dict[str, Any],
    models: dict[str, Path],
    workdir: Path,
    methods: list[str],
) -> dict[str, Any]:
    import ray

    from raymerge.config import load_config

    results: dict[str, Any] = {}
    print(f"local: one Ray with {args.cpus} CPUs; workers = in_flight in 1, {args.workers}")
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        refs = {n: str(p) for n, p in models.items()}
        for m in methods:
            cfg = load_config(merge_config(m, refs, args.density))
            out = str(workdir / f"out-local-{m}")
            rows = {}
            for k in sorted({1, args.workers}):
                opts = run_options(scale, k, args)
                rows[str(k)] = measure(f"{m} {k} worker(s)", cfg, out, None, opts, k, args.repeats)
            add_speedups(rows)
            results[m] = rows
            shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
    return results


def cluster_part(
    args: argparse.Namespace,
    scale: dict[str, Any],
    models: dict[str, Path],
    methods: list[str],
) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from raymerge.config import load_config

    results: dict[str, Any] = {m: {} for m in methods}
    node_args = {"num_cpus": 1, "object_store_memory": args.object_store_mb << 20}
    with LocalS3() as s3:
        print(f"cluster: local S3 endpoint {s3.endpoint}; uploading the family ...", flush=True)
        refs = s3.upload(BUCKET, models)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "object_store_memory": args.object_store_mb << 20},
        )
        try:
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            nodes = 0
            for n in sorted({1, args.nodes}):
                while nodes < n:
                    cluster.add_node(**node_args)
                    nodes += 1
                cluster.wait_for_nodes()
                wait_for_cpus(n)
                print(f"cluster: {n} worker node(s) of 1 CPU + a 0-CPU head")
                for m in methods:
                    cfg = load_config(merge_config(m, refs, args.density, s3.storage_options))
                    out = f"s3://{BUCKET}/out-{m}"
                    opts = run_options(scale, None, args)
                    # S3 inputs and output: two jobs per CPU by default, so 2n job slots
                    slots = n * (opts.execution.jobs_per_cpu or 2)
                    results[m][str(n)] = measure(
                        f"{m} {n} node(s)", cfg, out, s3.storage_options, opts, slots, args.repeats
                    )
                    clear_output(out, s3.storage_options)
            for rows in results.values():
                add_speedups(rows)
        finally:
            ray.shutdown()
            cluster.shutdown()
    return results


def wait_for_cpus(n: int, timeout: float = 60.0) -> None:
    import ray

    deadline = time.time() + timeout
    while ray.cluster_resources().get("CPU", 0) < n and time.time() < deadline:
        time.sleep(0.2)


COLUMNS = (
    "config",
    "wall s",
    "merge s",
    "x wall",
    "x merge",
    "jobs",
    "read s",
    "compute s",
    "write s",
    "sched s",
    "jobs/node",
)


def print_table(title: str, res: dict[str, Any], unit: str) -> None:
    lines = [list(COLUMNS)]
    fmt: Callable[[float], str] = "{:.2f}".format
    for m, rows in res.items():
        for k, r in rows.items():
            lines.append(
                [
                    f"{m} {k} {unit}",
                    fmt(r["wall_s"]),
                    fmt(r["merge_s"]),
                    f"{r['speedup_wall']:.2f}",
                    f"{r['speedup_merge']:.2f}",
                    str(r["jobs"]),
                    fmt(r["read_s_sum"]),
                    fmt(r["compute_s_sum"]),
                    fmt(r["write_s_sum"]),
                    fmt(r["sched_overhead_s"]),
                    " ".join(str(v) for v in r["jobs_per_node"].values()),
                ]
            )
    widths = [max(len(row[i]) for row in lines) for i in range(len(COLUMNS))]
    print(title)
    for i, row in enumerate(lines):
        print(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("small", "bench"), default="small", help="family size")
    ap.add_argument("--methods", default="ties,linear", help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    ap.add_argument("--workers", type=int, default=2, help="local: measure 1 and this many")
    ap.add_argument("--cpus", type=int, default=2, help="local: CPUs of the local Ray")
    ap.add_argument("--nodes", type=int, default=2, help="cluster: measure 1 and this many nodes")
    ap.add_argument("--density", type=float, default=0.2, help="ties/dare_ties density")
    ap.add_argument("--job-bytes", type=int, default=None, help="planner job size (bytes)")
    ap.add_argument("--shard-size", type=int, default=None, help="output shard size (bytes)")
    ap.add_argument("--object-store-mb", type=int, default=256, help="per simulated node")
    ap.add_argument("--workdir", default="/tmp/raymerge-scaling", help="models and local outputs")
    ap.add_argument("--skip-local", action="store_true", help="no local 1-vs-k-workers part")
    ap.add_argument("--skip-cluster", action="store_true", help="no simulated multi-node part")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown method(s) {', '.join(sorted(unknown))}; valid: {', '.join(METHODS)}")
    if args.workers > args.cpus:
        ap.error("--workers must not exceed --cpus (each job holds one CPU)")
    scale = SCALES[args.scale]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    models = build_family(workdir / f"models-{args.scale}", scale["model"])
    sizes = {n: model_bytes(p) for n, p in models.items()}
    print(f"family ({args.scale}): {sum(sizes.values()) / 1e9:.3f} GB in 3 models")

    env_address = os.environ.pop("RAY_ADDRESS", None)  # never attach to someone else's cluster
    report: dict[str, Any] = {
        "scale": args.scale,
        "model": scale["model"],
        "model_bytes": sizes,
        "methods": methods,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "job_bytes": args.job_bytes or scale["job_bytes"],
        "shard_size": args.shard_size or scale["shard_size"],
    }
    try:
        if not args.skip_local:
            report["local"] = local_part(args, scale, models, workdir, methods)
        if not args.skip_cluster:
            report["cluster"] = cluster_part(args, scale, models, methods)
    finally:
        if env_address is not None:
            os.environ["RAY_ADDRESS"] = env_address

    print()
    print(
        f"median of {args.repeats} run(s); x = speed-up vs 1 worker / 1 node; read/compute/"
        "write s = sums over jobs (manifest); sched s = merge_s * workers - their sum"
    )
    if "local" in report:
        print_table(f"local disk, one Ray of {args.cpus} CPUs", report["local"], "worker(s)")
    if "cluster" in report:
        print_table("simulated cluster, S3 (moto)", report["cluster"], "node(s)")
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
