"""The run ledger: completed jobs recorded as they finish, so an interrupted run can resume.

The driver appends job results (checksums, part ETags, timings) in small batches under
``OUT/.raymerge/ledger/`` (every couple of seconds and at the end; one object per batch, so it
works on object stores, which cannot append). A rerun of the same config and the same job layout
(``plan_hash``) loads the records; the sink then *verifies* each recorded job against what is
actually stored (checksums of staged bytes, or multipart part ETags) before trusting it, and only
the remaining jobs are recomputed. A driver killed at any moment loses at most one batch of
records, and those jobs are simply recomputed (jobs are idempotent).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from raymerge.io.files import write_json
from raymerge.io.sinks.base import ByteRange, checksum
from raymerge.plan import Job, Plan
from raymerge.results import JobResult
from raymerge.storage import Location

LEDGER_DIR = ".raymerge/ledger"


def plan_hash(plan: Plan) -> str:
    """Identity of the job layout: a ledger is only valid for the same jobs and byte ranges."""
    body = json.dumps(
        [plan.config_hash, [(j.id, j.shard, j.part, j.out_start, j.out_end) for j in plan.jobs]]
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class Ledger:
    def __init__(self, out: Location, key: str, interval: float = 2.0) -> None:
        self.out = out
        self.key = key
        self.interval = interval
        self.pending: list[dict[str, Any]] = []
        self.recorded: list[int] = []
        self.seq = 0
        self.last = time.monotonic()

    def _dir(self) -> Location:
        return self.out.child(LEDGER_DIR)

    def load(self) -> dict[int, JobResult]:
        """Recorded results of this job layout, by job id (later records win)."""
        fs, d = self.out.fs, self._dir()
        if not fs.exists(d.path):
            return {}
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(d.path, detail=False))
        records: dict[int, JobResult] = {}
        for name in names:
            if not name.startswith(self.key + "-") or not name.endswith(".json"):
                continue
            self.seq = max(self.seq, int(name[len(self.key) + 1 : -5]) + 1)
            for rec in json.loads(fs.cat_file(d.child(name).path)):
                records[int(rec["job"])] = JobResult.from_record(rec)
        return records

    def record(self, result: JobResult) -> None:
        self.pending.append(result.as_record())
        self.recorded.append(result.job)
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            write_json(self.out, f"{LEDGER_DIR}/{self.key}-{self.seq:06d}.json", self.pending)
            self.seq += 1
            self.pending = []
        self.last = time.monotonic()

    def clear(self) -> None:
        fs, d = self.out.fs, self._dir()
        if fs.exists(d.path):
            fs.rm(d.path, recursive=True)


def job_matches(job: Job, data: memoryview, rec: JobResult, header_len: int) -> bool:
    """Do ``data`` (the job's staged byte range) match the checksums recorded for it?"""
    if len(data) != job.nbytes or len(rec.checksums) != len(job.pieces):
        return False
    if job.part == 1 and checksum(data[:header_len]) != rec.header_checksum:
        return False
    return all(
        checksum(data[p.out_start - job.out_start : p.out_end - job.out_start]) == c
        for p, c in zip(job.pieces, rec.checksums)
    )


def kept_jobs(sink, jobs: list[Job], records: dict[int, JobResult], headers: list[int]) -> set[int]:
    """The recorded jobs whose bytes the sink still holds as recorded (a resumed run keeps
    them)."""
    by_id = {j.id: j for j in jobs}
    recorded: dict[int, tuple[ByteRange, Any]] = {
        jid: (by_id[jid].byte_range, rec.receipt) for jid, rec in records.items() if jid in by_id
    }

    def matches(r: ByteRange, data: memoryview) -> bool:
        return job_matches(by_id[r.key], data, records[r.key], headers[r.shard])

    return sink.kept(recorded, matches)
