"""The ``raymerge`` command: one module per subcommand (run, plan, verify, demo).

User errors (bad config, bad inputs, unusable output) print one paragraph to stderr and exit 2,
with no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from raymerge import __version__
from raymerge.cli import demo, plan, run, verify
from raymerge.errors import RaymergeError

COMMANDS = {"run": run, "plan": plan, "verify": verify, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="raymerge",
        description="Model merging for very large checkpoints, as a Ray pipeline: mergekit "
        "YAML in, Hugging Face safetensors shards, a manifest and _SUCCESS out.",
    )
    ap.add_argument("--version", action="version", version=f"raymerge {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for mod in COMMANDS.values():
        mod.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd].main(args)
    except RaymergeError as exc:
        print(f"raymerge: error: {exc}", file=sys.stderr, flush=True)
        if getattr(exc, "stuck", False):  # a thread is blocked inside Ray: do not wait for it
            sys.stdout.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("raymerge: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
