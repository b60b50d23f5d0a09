"""Progress for long merges: a tqdm bar on a terminal, plain periodic lines otherwise (job logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from raymerge.plan import Job
from raymerge.results import JobResult
from raymerge.summary import fmt_bytes


class Progress:
    def __init__(
        self,
        jobs: list[Job],
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ) -> None:
        self.stream = stream or sys.stdout
        self.total_tensors = sum(len(j.pieces) for j in jobs)
        self.total_bytes = sum(j.nbytes for j in jobs)
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.interval = interval
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.pieces = 0
        self.read = 0
        self.written = 0
        self.retries = 0
        self.bar = (
            tqdm(
                total=self.total_bytes, unit="B", unit_scale=True, desc="merging", file=self.stream
            )
            if self.tty
            else None
        )

    def update(self, job: Job, result: JobResult) -> None:
        self.pieces += len(job.pieces)
        self.read += result.bytes_read
        self.written += result.bytes_written
        self.retries += result.attempt - 1
        if self.bar is not None:
            self.bar.update(result.bytes_written)
            self.bar.set_postfix(
                tensors=f"{self.pieces}/{self.total_tensors}", retries=self.retries
            )
            return
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.interval or self.written >= self.total_bytes):
            self.last = now
            el = now - self.t0
            rate = self.written / el if el else 0.0
            eta = (self.total_bytes - self.written) / rate if rate else float("nan")
            print(
                f"[raymerge] pieces {self.pieces}/{self.total_tensors}"
                f" | read {fmt_bytes(self.read)} | written {fmt_bytes(self.written)}"
                f" | {fmt_bytes(rate)}/s | ETA {eta:.0f}s"
                f" | retries {self.retries}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
