"""``raymerge run CONFIG OUT``: merge, then print the summary."""

from __future__ import annotations

import argparse
import json
import sys

from raymerge.options import add_run_arguments, options_from
from raymerge.summary import print_summary, process_seconds


def load(args: argparse.Namespace):
    """The config the arguments name, with ``--random-seed`` applied; its warnings printed
    (once each) to stderr."""
    from raymerge.config import load_config

    cfg = load_config(args.config, strict=args.strict)
    for w in cfg.warnings:
        print(f"raymerge: warning: {w}", file=sys.stderr)
    if args.random_seed is not None:
        cfg = cfg.model_copy(update={"random_seed": args.random_seed})
    return cfg


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="merge CONFIG into OUT (local folder or s3:// URL)",
        description="Merge CONFIG into OUT. Rerunning the same command resumes an interrupted "
        "run; a finished one is left as it is.",
    )
    add_run_arguments(p)


def main(args: argparse.Namespace) -> int:
    from raymerge.pipeline import run_merge

    summary = run_merge(load(args), args.out, options_from(args))
    summary["process_s"] = process_seconds()  # with start-up and Ray's shutdown
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary.get("already_complete"):
        print(
            f"raymerge: {args.out} is already complete: nothing to do (run "
            f"{summary.get('run_id', '?')}; `raymerge verify {args.out}` re-checks every byte)"
        )
    else:
        print(f"raymerge: merged into {args.out}")
        print_summary(summary)
    return 0
