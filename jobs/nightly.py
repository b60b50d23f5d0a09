"""Nightly merge into dated folders; merges only when the inputs changed.

    ray job submit --working-dir . -- python jobs/nightly.py CONFIG --output-root URL \
        [--keep N] [raymerge run options]

1. Read every input's headers and object metadata (no tensor bytes) and fingerprint them with
   the config hash and shard size (:mod:`jobs.runs`).
2. If ``URL/LATEST`` names a finished run with the same fingerprint: print "inputs unchanged"
   and exit 0.
3. Otherwise merge into ``URL/<YYYYMMDD>-<fingerprint8>/`` (UTC date; rerunning after an
   interruption picks the same folder and raymerge resumes it), verify, record the fingerprint,
   and only then point ``URL/LATEST`` at it and delete all but the ``--keep`` newest runs.
   A failed run leaves LATEST and every older run untouched.
Exit codes as jobs/merge.py: 0 ok or unchanged, 2 user error, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `jobs` and the repo's raymerge importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import runs  # noqa: E402
from jobs.common import (  # noqa: E402
    guarded,
    load_job_config,
    merge_and_verify,
    parse_run_args,
    run_options,
    say,
)

PROG = "nightly"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    ap = argparse.ArgumentParser(
        prog="jobs/nightly.py",
        allow_abbrev=False,
        description="merge CONFIG into OUTPUT_ROOT/<date>-<fingerprint> when its inputs changed",
        epilog="Any other option is a `raymerge run` option (--shard-size, --job-memory, ...).",
    )
    ap.add_argument("config", help="merge YAML (path in the working dir, or a URL)")
    ap.add_argument("--output-root", required=True, help="folder or URL holding dated runs")
    ap.add_argument("--keep", type=int, default=7, help="finished runs to keep (default 7)")
    ns, rest = ap.parse_known_args(argv)
    if ns.keep < 1:
        ap.error("--keep must be at least 1")
    root = ns.output_root.rstrip("/")
    run_args = parse_run_args([ns.config, root + "/RUN", *rest], prog="jobs/nightly.py")
    return ns, run_args


def nightly(ns: argparse.Namespace, args: argparse.Namespace, now=None) -> int:
    from raymerge import load_inputs, redact, resolve

    cfg = load_job_config(args)
    opts = run_options(args)
    root_url = ns.output_root.rstrip("/")
    root = resolve(root_url, cfg.storage_options, output=True)
    say(PROG, f"reading input headers of {len(cfg.input_refs())} models")
    fp, inputs = runs.input_fingerprint(cfg, load_inputs(cfg), opts.shard_size)
    latest = runs.read_latest(root)
    say(PROG, f"input fingerprint {fp[:8]}; LATEST is {latest or '(none)'}")
    if latest:
        rec = runs.read_record(root, latest)
        if rec and rec.get("fingerprint") == fp and runs.is_complete(root, latest):
            say(PROG, f"inputs unchanged since {latest}; nothing to merge")
            return 0

    run = runs.pick_run(root, fp, now)
    out_url = f"{root_url}/{run}"
    rec = runs.read_record(root, run)
    if rec and rec.get("fingerprint") == fp and runs.is_complete(root, run):
        say(PROG, f"{run} is already merged from these inputs; verifying it before publishing")
    summary, _ = merge_and_verify(PROG, cfg, out_url, opts, as_json=args.json)

    # Record what was actually merged: the inputs the manifest saw (equal to `inputs` unless
    # they changed while the run was reading them).
    from raymerge.manifest import read_manifest

    _, meta = read_manifest(resolve(out_url, cfg.storage_options, output=True))
    merged_inputs = meta.get("inputs") or inputs
    merged_fp = runs.fingerprint(cfg.hash(), merged_inputs, opts.shard_size)
    if merged_fp != fp:
        say(PROG, f"warning: inputs changed during the run; {run} holds inputs {merged_fp[:8]}")
    runs.write_record(
        root,
        run,
        {
            "fingerprint": merged_fp,
            "config_hash": cfg.hash(),
            "shard_size": opts.shard_size,
            "inputs": merged_inputs,
            "run_id": summary.get("run_id"),
            "finished": time.time(),
        },
    )
    runs.write_latest(root, run)
    say(PROG, f"LATEST -> {run} ({redact(out_url)})")
    for gone in runs.prune(root, ns.keep, run):
        say(PROG, f"deleted old run {gone}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns, args = parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(PROG, lambda: nightly(ns, args))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
