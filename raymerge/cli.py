"""Command line: ``raymerge run | plan | verify | demo``. Thin: parse, call, report.

User errors (bad config, bad inputs, unusable output) print one paragraph to stderr and exit 2,
with no traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from raymerge.errors import RaymergeError
from raymerge.progress import fmt_bytes

_SIZE = re.compile(r"^\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*$", re.I)


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '2GiB' -> 2 * 2**30, '123' -> 123."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 2GiB, 500MB)")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    base = 1024 if binary else 1000
    return int(num * base ** "_KMGT".index(unit or "_"))


def _common(p: argparse.ArgumentParser) -> None:
    from raymerge.plan import DEFAULT_JOB_BYTES, DEFAULT_JOB_MEMORY, DEFAULT_SHARD_SIZE

    p.add_argument("config", help="mergekit-style merge YAML")
    p.add_argument(
        "--shard-size",
        type=parse_size,
        default=DEFAULT_SHARD_SIZE,
        help="max bytes of tensor data per output shard (default 5GB)",
    )
    p.add_argument(
        "--job-memory",
        type=parse_size,
        default=DEFAULT_JOB_MEMORY,
        help="memory budget per job; larger tensors are chunked by rows (default 1GiB)",
    )
    p.add_argument(
        "--job-bytes",
        type=parse_size,
        default=DEFAULT_JOB_BYTES,
        help="target output bytes per job (default 64MiB)",
    )
    p.add_argument("--random-seed", type=int, default=None, help="override random_seed")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="raymerge", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="merge CONFIG into OUT (local folder or s3:// URL)")
    _common(run)
    run.add_argument("out", help="output folder or URL")
    run.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)"
    )
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs for a locally started Ray")
    run.add_argument("--in-flight", type=int, default=None, help="max jobs submitted at once")
    run.add_argument(
        "--num-gpus-per-job",
        type=float,
        default=None,
        help="GPUs per job (default: 0.5 if the cluster has GPUs when the run "
        "starts, else 0; set it for autoscaling clusters that start without GPUs)",
    )
    run.add_argument("--max-attempts", type=int, default=3, help="attempts per job (default 3)")
    run.add_argument(
        "--keep-workers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep a pool of warm worker processes on the cluster for SECONDS after the run, for "
        "the next runs to reuse (they hold their CPUs while idle; default 0: no pool)",
    )
    run.add_argument(
        "--jobs-per-cpu",
        type=positive_int,
        default=None,
        metavar="N",
        help="jobs sharing one CPU, so N-1 wait on storage while one computes (default: 2 when "
        "an input or the output is remote, else 1)",
    )
    run.add_argument(
        "--keep-bytes",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="object-store memory for chunks of remote inputs kept from a tensor's first "
        "statistics round to its merge (TIES, DARE-TIES, DELLA, Model Stock), so each is read "
        "from storage once (default: half the cluster's object store; 0: read every round)",
    )
    run.add_argument("--overwrite", action="store_true", help="reuse an OUT holding another run")
    run.add_argument("--allow-nonfinite", action="store_true", help="merge inputs holding NaN/Inf")
    run.add_argument("--no-progress", action="store_true", help="no progress output")
    run.add_argument(
        "--ledger-interval",
        type=float,
        default=2.0,
        help="seconds between ledger flushes; a resumed run redoes at most this much",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    plan = sub.add_parser("plan", help="show what a run would do (reads headers only)")
    _common(plan)
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    ver = sub.add_parser("verify", help="check OUT against its manifest")
    ver.add_argument("out")
    ver.add_argument("--storage-options", default=None, help="JSON fsspec options for OUT")
    demo = sub.add_parser("demo", help="generate a tiny model family and merge it end to end")
    demo.add_argument("--workdir", default="raymerge-demo", help="where models and output go")
    demo.add_argument("--s3", action="store_true", help="go through a local S3 endpoint (moto)")
    demo.add_argument("--method", default="task_arithmetic", choices=["linear", "task_arithmetic"])
    return ap


def _load(args: argparse.Namespace):
    from raymerge.config import load_config

    cfg = load_config(args.config)
    if args.random_seed is not None:
        cfg = cfg.model_copy(update={"random_seed": args.random_seed})
    return cfg


def run_options(args: argparse.Namespace):
    """RunOptions from parsed ``run``/``plan`` arguments (also used by the jobs/ entry points)."""
    from raymerge.executor import ExecOptions
    from raymerge.runner import RunOptions

    return RunOptions(
        shard_size=args.shard_size,
        job_memory=args.job_memory,
        job_bytes=args.job_bytes,
        overwrite=getattr(args, "overwrite", False),
        allow_nonfinite=getattr(args, "allow_nonfinite", False),
        ledger_interval=getattr(args, "ledger_interval", 2.0),
        execution=ExecOptions(
            address=getattr(args, "address", None),
            num_cpus=getattr(args, "num_cpus", None),
            in_flight=getattr(args, "in_flight", None),
            num_gpus_per_job=getattr(args, "num_gpus_per_job", None),
            max_attempts=getattr(args, "max_attempts", 3),
            keep_workers=getattr(args, "keep_workers", 0.0),
            jobs_per_cpu=getattr(args, "jobs_per_cpu", None),
            keep_bytes=getattr(args, "keep_bytes", None),
            progress=not getattr(args, "no_progress", False),
        ),
    )


def print_summary(s: dict[str, Any], file=sys.stdout) -> None:
    rows = [
        ("method", s["method"]),
        ("tensors / jobs / shards", f"{s['tensors']} / {s['jobs']} / {s['shards']}"),
        ("read", fmt_bytes(s["bytes_read"])),
        ("reused from memory", fmt_bytes(s.get("bytes_reused", 0))),
        ("written", fmt_bytes(s["bytes_written"])),
        ("merge time", f"{s['merge_s']:.2f} s"),
        ("wall time", f"{s['wall_s']:.2f} s"),
        ("throughput", f"read {s['read_gbps']:.2f} GB/s, write {s['write_gbps']:.2f} GB/s"),
        ("peak job memory (planned)", fmt_bytes(s["peak_job_memory_planned"])),
        ("peak worker RSS", fmt_bytes(s["peak_worker_rss"])),
        ("retries (jobs / storage requests)", f"{s['retries']} / {s.get('storage_retries', 0)}"),
        ("nodes", s["nodes"]),
    ]
    if "zipit" in s:
        z = s["zipit"]
        rows.append(
            (
                f"{z['matcher']} stage",
                f"{z['spaces']} spaces, {z['samples']} samples on {z['actors']} actors, "
                f"{z['within_model_merges']} within-model merges; statistics "
                f"{z['stats_s']:.2f} s, matching {z['match_s']:.2f} s",
            )
        )
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=file)


def cmd_run(args: argparse.Namespace) -> int:
    from raymerge.runner import run_merge

    summary = run_merge(_load(args), args.out, run_options(args))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"raymerge: merged into {args.out}")
        print_summary(summary)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from raymerge.runner import build_plan

    plan, _ = build_plan(_load(args), run_options(args))
    s = plan.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(
        f"method {s['method']}: {s['tensors']} tensors ({s['chunked_tensors']} chunked) in "
        f"{s['jobs']} jobs; read {fmt_bytes(s['bytes_read'])}, write "
        f"{fmt_bytes(s['bytes_written'])} in {len(s['output_shards'])} shards; peak job "
        f"memory {fmt_bytes(s['peak_job_memory_bytes'])}"
    )
    for sh in s["output_shards"]:
        print(f"  {sh['name']}: {fmt_bytes(sh['bytes'])}, {sh['tensors']} tensors")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from raymerge.storage import resolve
    from raymerge.verify import verify_output

    opts = json.loads(args.storage_options) if args.storage_options else None
    out = resolve(args.out, {args.out: opts} if opts else None)
    r = verify_output(out)
    print(
        f"raymerge: {args.out} OK: {r['pieces']} tensors/chunks, {fmt_bytes(r['bytes'])} "
        f"in {r['shards']} shards match the manifest"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from raymerge.demo import run_demo

    return run_demo(args.workdir, s3=args.s3, method=args.method)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "plan": cmd_plan, "verify": cmd_verify, "demo": cmd_demo}[args.cmd]
    try:
        return handler(args)
    except RaymergeError as exc:
        print(f"raymerge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("raymerge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
