"""``raymerge demo``: generate a tiny model family and merge it end to end (no downloads)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a tiny model family and merge it end to end",
        description="Generate a tiny Llama-shaped family, merge it on a local Ray cluster, "
        "verify the output and load it back.",
    )
    p.add_argument("--workdir", default="raymerge-demo", help="where models and output go")
    p.add_argument("--s3", action="store_true", help="go through a local S3 endpoint (moto)")
    p.add_argument("--method", default="task_arithmetic", choices=["linear", "task_arithmetic"])


def main(args: argparse.Namespace) -> int:
    from raymerge.demo import run_demo

    return run_demo(args.workdir, s3=args.s3, method=args.method)
