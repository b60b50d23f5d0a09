"""I/O-compute overlap benchmark: merging from S3 with one job per CPU vs two, and pooled workers.

Why: a job that reads its inputs from object storage waits on the network, then computes, then
waits again to upload. With one job per CPU the CPU idles during the waits; raymerge therefore
gives network-bound jobs half a CPU each (``jobs_per_cpu`` 2: one computes while the other
reads or writes), and pooled workers (``--keep-workers``) run two jobs at a time with a compute
lock. This measures what that buys against the one-job-per-CPU schedule on the same merge.

Setup: the family of ``--scale`` (default ``medium``: ~34M parameters, 67 MB of bf16 per model)
uploaded to a local S3 endpoint (moto's server in a child process); output on the local disk;
one in-process Ray with ``--cpus`` CPUs (default 2). Modes, for every method in ``--methods``:

* ``1 job/CPU``: ``ExecOptions(jobs_per_cpu=1)``: the schedule before overlap existed;
* ``2 jobs/CPU``: the default for remote inputs;
* ``pooled``: ``keep_workers`` actors (two jobs each, one computing at a time).

``--stream-mbps`` (default 25) puts a throttling proxy between the jobs and moto: each request's
bytes take as long as one stream of that bandwidth needs (a sleep, no CPU), while concurrent
streams add up, as S3's do; 0 talks to moto directly (moto's own CPU is then the limit, and
the modes cannot differ much).

Each: one warm-up, then ``--repeats`` timed ``run_merge`` calls (median), with the per-job read /
compute / write sums from the median run's manifest. moto runs on the same cores as the merge and
is no real S3; the ratio between the modes is the point.

Usage::

    python benchmarks/overlap.py [--scale medium] [--methods linear,ties] [--repeats 3]
        [--cpus 2] [--workdir /tmp/raymerge-overlap]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import SCALES, LocalS3, build_family, merge_config
from scaling import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.faultproxy import FaultProxy  # noqa: E402 - the repository root is on the path now

BUCKET = "raymerge-overlap"
MODES = {"1 job/CPU": {"jobs_per_cpu": 1}, "2 jobs/CPU": {}, "pooled": {"keep_workers": 30.0}}


def options(scale: dict[str, Any], mode: dict[str, Any]) -> Any:
    from raymerge.options import ExecOptions, RunOptions

    kw = {k: scale[k] for k in ("job_bytes", "shard_size") if scale[k]}
    return RunOptions(overwrite=True, execution=ExecOptions(progress=False, **mode), **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=tuple(SCALES), default="medium", help="family size")
    ap.add_argument("--methods", default="linear,ties", help="comma list of methods")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--workdir", default="/tmp/raymerge-overlap", help="models and outputs")
    ap.add_argument(
        "--stream-mbps", type=float, default=25.0, help="per-request bandwidth (0: no proxy)"
    )
    args = ap.parse_args(argv)

    import ray

    from raymerge.config import MergeConfig

    scale = SCALES[args.scale]
    workdir = Path(args.workdir)
    models = build_family(workdir / f"models-{args.scale}", scale["model"])
    results: dict[str, dict[str, Any]] = {}
    with LocalS3() as s3, FaultProxy(s3.endpoint, 0.0, 0, args.stream_mbps * 1e6) as proxy:
        refs = s3.upload(BUCKET, models)
        if args.stream_mbps:
            s3.endpoint = proxy.url  # the jobs read and write through the throttle
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False)
        try:
            for method in args.methods.split(","):
                cfg = MergeConfig.model_validate(
                    merge_config(method, refs, storage_options=s3.storage_options)
                )
                for label, mode in MODES.items():
                    out = str(workdir / f"out-{method}")
                    row = measure(
                        f"{method} {label}",
                        cfg,
                        out,
                        None,
                        options(scale, mode),
                        args.cpus,
                        args.repeats,
                    )
                    results[f"{method} {label}"] = row
        finally:
            ray.shutdown()

    where = (
        f"moto behind a {args.stream_mbps:g} MB/s-per-request throttle"
        if args.stream_mbps
        else "moto"
    )
    print(f"\n{args.scale} family from S3 ({where}), {args.cpus} CPUs, median of {args.repeats}")
    head = f"{'run':<20} {'wall s':>7} {'merge s':>8} {'vs 1/CPU':>9} {'read':>7} {'compute':>8}"
    print(head + f" {'write':>7}   (read/compute/write: sums over jobs, s)")
    for key, r in results.items():
        method = key.split()[0]
        base = results[f"{method} 1 job/CPU"]["wall_s"]
        r["speedup_vs_1_per_cpu"] = base / r["wall_s"]
        print(
            f"{key:<20} {r['wall_s']:>7.2f} {r['merge_s']:>8.2f} {r['speedup_vs_1_per_cpu']:>8.2f}x"
            f" {r['read_s_sum']:>7.1f} {r['compute_s_sum']:>8.1f} {r['write_s_sum']:>7.1f}"
        )
    report = {"scale": args.scale, "cpus": args.cpus, "stream_mbps": args.stream_mbps}
    print(json.dumps({**report, "runs": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
