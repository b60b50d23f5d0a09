"""What merge.py and nightly.py share: argument parsing, config loading, merge + verify, exits.

Everything goes through raymerge's Python API; the run options are raymerge's own ``run``
options (same names, same defaults), so a job accepts exactly what ``raymerge run`` accepts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from raymerge import SUCCESS, RunOptions, load_config, redact, resolve, run_merge, verify_output
from raymerge.config import MergeConfig
from raymerge.errors import RaymergeError, VerifyError
from raymerge.options import add_run_arguments, options_from
from raymerge.summary import print_summary


class JobFailed(Exception):
    """The merge ran but its result cannot be trusted (no _SUCCESS, verify failed): exit 1."""


def say(prog: str, msg: str) -> None:
    """One plain progress line on stdout (Ray job logs are not a terminal)."""
    print(f"[{prog}] {msg}", flush=True)


def parse_run_args(argv: list[str], prog: str) -> argparse.Namespace:
    """``CONFIG OUT [raymerge run options]`` parsed by raymerge's own ``run`` parser.

    Inside a Ray job, RAY_ADDRESS names the job's cluster; it becomes ``--address`` unless one
    was given.
    """
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if not args.address and os.environ.get("RAY_ADDRESS"):
        args.address = os.environ["RAY_ADDRESS"]
    return args


def load_job_config(args: argparse.Namespace) -> MergeConfig:
    """The merge config: a local path (relative to the job's working dir) or any fsspec URL;
    its warnings printed to stderr."""
    cfg = load_config(args.config, strict=args.strict)
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr, flush=True)
    if args.random_seed is not None:
        cfg = cfg.model_copy(update={"random_seed": args.random_seed})
    return cfg


def run_options(args: argparse.Namespace) -> RunOptions:
    """The same RunOptions ``raymerge run`` builds from these arguments."""
    return options_from(args)


def merge_and_verify(
    prog: str, cfg: MergeConfig, out_url: str, opts: RunOptions, *, as_json: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge, then check ``_SUCCESS`` and verify every byte against the manifest."""
    where = opts.execution.address or "a local Ray"
    say(prog, f"merging into {redact(out_url)} on {where}")
    summary = run_merge(cfg, out_url, opts)
    if as_json:
        print(json.dumps(summary, indent=2), flush=True)
    else:
        done = "already complete" if summary.get("already_complete") else "merged"
        say(prog, f"{done}: {redact(out_url)}")
        if "tensors" in summary:
            print_summary(summary)
        sys.stdout.flush()
    out = resolve(out_url, cfg.storage_options, output=True)
    if not out.fs.exists(out.child(SUCCESS).path):
        raise JobFailed(f"{redact(out_url)}: the merge returned but wrote no {SUCCESS}")
    say(prog, f"verifying {redact(out_url)} against its manifest")
    try:
        report = verify_output(out)
    except VerifyError as exc:
        raise JobFailed(f"verify failed: {exc}") from None
    say(
        prog,
        f"verify OK: {report['pieces']} tensors/chunks, {report['bytes']} bytes in "
        f"{report['shards']} shards match the manifest",
    )
    return summary, report


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; user errors -> one paragraph on stderr and exit 2, failed checks -> 1."""
    try:
        return fn()
    except RaymergeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        if getattr(exc, "stuck", False):  # a thread is blocked inside Ray: do not wait for it
            sys.stdout.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except JobFailed as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
