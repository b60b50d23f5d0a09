"""Fault injection for the tests, through raymerge's hooks (:class:`raymerge.pipeline.RunHooks`).

``python -m tests.chaos run CONFIG OUT [raymerge run options] --kill-driver-after N`` runs a
merge whose driver SIGKILLs itself once N jobs are recorded in the ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


class KillOnce:
    """A job fault hook: the first job to create ``marker`` SIGKILLs its own worker process
    (between its read and its compute); every other job runs normally."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, job, attempt: int) -> None:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(job.id).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def kill_driver_after(n: int):
    """An ``after_job`` hook: SIGKILL the driver once ``n`` jobs are recorded."""

    def hook(job, recorded: int) -> None:
        if recorded >= n:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(argv: list[str] | None = None) -> int:
    from raymerge.config import load_config
    from raymerge.options import add_run_arguments, options_from
    from raymerge.pipeline import RunHooks, run_merge

    ap = argparse.ArgumentParser(prog="tests.chaos")
    ap.add_argument("cmd", choices=["run"])
    add_run_arguments(ap)
    ap.add_argument("--kill-driver-after", type=int, default=0)
    args = ap.parse_args(argv)
    n = args.kill_driver_after
    hooks = RunHooks(after_job=kill_driver_after(n) if n else None)
    summary = run_merge(load_config(args.config), args.out, options_from(args), hooks)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
