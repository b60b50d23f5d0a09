"""Chunks kept between statistics rounds: a TIES merge from S3 that reads each chunk once vs once
per round.

Why: TIES (and DARE-TIES, DELLA, breadcrumbs, Model Stock) needs whole-tensor statistics; a
tensor too large for one job is split into chunks, and its exact magnitude thresholds take two
rounds over every chunk before the merge jobs. At 70B most large tensors are chunked, so reading
each chunk again per round triples TIES's storage traffic (``cost_model.py``). The executor keeps
the first round's bytes of each chunk of a remote input in Ray's object store until its merge job
has run (``ExecOptions.keep_bytes``, ``--keep-bytes``); ``keep_bytes=0`` reads again each round.

Setup: the family of ``--scale`` (default ``medium``, ~67 MB of bf16 per model) uploaded to a
local S3 endpoint (moto in a child process) behind a proxy that counts the bytes it serves and
holds each response back as long as one ``--stream-mbps`` stream would take (0: no throttle);
TIES (base + 2, density 0.2) with ``--job-memory`` (default 40 MiB: 58 of 75 tensors chunked, as
most large tensors are at 70B under the default 1 GiB); output on the local disk; one
in-process Ray with ``--cpus`` CPUs. Modes: ``keep`` (the default), ``re-read``
(``keep_bytes=0``), ``pooled`` (the default with ``keep_workers``: actors, not tasks). Each
mode: one warm-up, then ``--repeats`` timed runs (median). Reported: wall, bytes read from S3
per run as counted by the proxy and by the run summary, bytes reused from the object store, and
the most held there at once.

Usage::

    python benchmarks/keep_chunks.py [--scale medium] [--job-memory 40MiB] [--repeats 3]
        [--cpus 2] [--stream-mbps 25] [--workdir /tmp/raymerge-keep]
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
from raymerge.options import parse_size  # noqa: E402 - the repository root is on the path now
from tests.faultproxy import FaultProxy  # noqa: E402

BUCKET = "raymerge-keep"
MODES = {"keep": {}, "re-read": {"keep_bytes": 0}, "pooled": {"keep_workers": 30.0}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=tuple(SCALES), default="medium", help="family size")
    ap.add_argument("--job-memory", type=parse_size, default=40 << 20, help="per-job budget")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--stream-mbps", type=float, default=25.0, help="per-request MB/s (0: none)")
    ap.add_argument("--workdir", default="/tmp/raymerge-keep", help="models and outputs")
    args = ap.parse_args(argv)

    import ray

    from raymerge.config import MergeConfig
    from raymerge.options import ExecOptions, RunOptions

    scale = SCALES[args.scale]
    workdir = Path(args.workdir)
    models = build_family(workdir / f"models-{args.scale}", scale["model"])
    kw = {k: scale[k] for k in ("job_bytes", "shard_size") if scale[k]}
    results: dict[str, dict[str, Any]] = {}
    with LocalS3() as s3, FaultProxy(s3.endpoint, 0.0, 0, args.stream_mbps * 1e6) as proxy:
        refs = s3.upload(BUCKET, models)
        s3.endpoint = proxy.url  # every read goes through the counting (and throttling) proxy
        cfg = MergeConfig.model_validate(
            merge_config("ties", refs, storage_options=s3.storage_options)
        )
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False)
        try:
            for label, mode in MODES.items():
                opts = RunOptions(
                    overwrite=True,
                    job_memory=args.job_memory,
                    execution=ExecOptions(progress=False, **mode),
                    **kw,
                )
                before = sum(proxy.served.values())
                row = measure(
                    f"ties {label}", cfg, str(workdir / "out"), None, opts, args.cpus, args.repeats
                )
                served = sum(proxy.served.values()) - before
                row["s3_bytes_per_run"] = served / (args.repeats + 1)  # warm-up included
                results[label] = row
        finally:
            ray.shutdown()

    print(
        f"\nTIES, {args.scale} family from S3 (moto, {args.stream_mbps:g} MB/s per request), "
        f"--job-memory {args.job_memory >> 20} MiB, {args.cpus} CPUs, median of {args.repeats}"
    )
    print(
        f"{'mode':<8} {'wall s':>7} {'merge s':>8} {'S3 MB/run':>10} {'read MB':>8} "
        f"{'reused MB':>10} {'held MB':>8}"
    )
    for label, r in results.items():
        print(
            f"{label:<8} {r['wall_s']:>7.2f} {r['merge_s']:>8.2f}"
            f" {r['s3_bytes_per_run'] / 1e6:>10.1f} {r['storage_bytes_read'] / 1e6:>8.1f}"
            f" {r['bytes_reused'] / 1e6:>10.1f} {r['kept_peak_bytes'] / 1e6:>8.1f}"
        )
    keep, reread = results["keep"], results["re-read"]
    print(
        f"keep vs re-read: {reread['wall_s'] / keep['wall_s']:.2f}x faster, "
        f"{reread['s3_bytes_per_run'] / keep['s3_bytes_per_run']:.2f}x fewer bytes from S3"
    )
    report = {"scale": args.scale, "cpus": args.cpus, "stream_mbps": args.stream_mbps}
    report["job_memory"] = args.job_memory
    print(json.dumps({**report, "runs": results}, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
