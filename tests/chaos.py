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
import time


def _first_of_all(marker: str) -> bool:
    """True for the one caller that creates ``marker``; every other caller waits (up to a
    minute) until that one has called :func:`_done`, so no job reads while the change is
    half made (a job that read the old version then would pass, and the test with it)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(marker + ".done"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker}: the first job never finished its change")
        time.sleep(0.01)
    return False


def _done(marker: str) -> None:
    os.close(os.open(marker + ".done", os.O_CREAT | os.O_WRONLY))


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


class RewriteOnce:
    """A job fault hook: the first job to create ``marker`` rewrites the local file ``path`` in
    place (``"same-size"``: its last byte flipped; ``"longer-header"``: the header padded with
    16 spaces, so every offset moves; ``"digit"``: its last digit changed, a valid same-size edit
    of a JSON file), as a fine-tune updated mid-run would."""

    def __init__(self, marker: str, path: str, how: str = "same-size") -> None:
        self.marker, self.path, self.how = marker, path, how

    def __call__(self, job, attempt: int) -> None:
        if not _first_of_all(self.marker):
            return
        data = bytearray(open(self.path, "rb").read())
        if self.how == "same-size":
            data[-1] ^= 0xFF
        elif self.how == "digit":  # a same-size, still valid edit of a text file (a JSON value)
            i = max(k for k, c in enumerate(data) if 48 <= c <= 57)
            data[i] = 48 + (data[i] - 47) % 10
        else:
            n = int.from_bytes(data[:8], "little")
            data = (
                bytearray((n + 16).to_bytes(8, "little"))
                + data[8 : 8 + n]
                + b" " * 16
                + data[8 + n :]
            )
        time.sleep(0.01)  # a new mtime
        with open(self.path, "r+b") as f:
            f.write(data)
        _done(self.marker)


class ReplaceS3Once:
    """A job fault hook: the first job to create ``marker`` replaces the S3 object ``key`` with
    other bytes of the same size (a new ETag)."""

    def __init__(self, marker: str, options: dict, key: str) -> None:
        self.marker, self.options, self.key = marker, options, key

    def __call__(self, job, attempt: int) -> None:
        if not _first_of_all(self.marker):
            return
        import s3fs

        fs = s3fs.S3FileSystem(**self.options)
        data = bytearray(fs.cat_file(self.key))
        data[-1] ^= 0xFF
        fs.pipe_file(self.key, bytes(data))
        _done(self.marker)


class FullDiskOnce:
    """A job fault hook: the first job to create ``marker`` turns the staged shards into links
    to /dev/full, so its write fails with ENOSPC (a disk that filled up mid-run)."""

    def __init__(self, marker: str, staging: str) -> None:
        self.marker, self.staging = marker, staging

    def __call__(self, job, attempt: int) -> None:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        for name in os.listdir(self.staging):
            os.remove(os.path.join(self.staging, name))
            os.symlink("/dev/full", os.path.join(self.staging, name))


class SleepForever:
    """A job fault hook: every job hangs (a stalled node)."""

    def __call__(self, job, attempt: int) -> None:
        time.sleep(3600)


class SleepUntil:
    """A job fault hook: every job hangs until ``marker`` exists (at most ``limit`` s), so a
    test can release the threads it left blocked."""

    def __init__(self, marker: str, limit: float = 120.0) -> None:
        self.marker, self.limit = marker, limit

    def __call__(self, job, attempt: int) -> None:
        end = time.monotonic() + self.limit
        while not os.path.exists(self.marker) and time.monotonic() < end:
            time.sleep(0.05)


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
