"""The resume ledger: records survive in batches, and only bytes still stored as recorded are
kept."""

from __future__ import annotations

from raymerge.io.sinks.base import checksum
from raymerge.ledger import Ledger, job_matches
from raymerge.params import ResolvedParams
from raymerge.plan import Job, Piece
from raymerge.results import JobResult
from raymerge.storage import resolve


def piece(start: int, end: int) -> Piece:
    return Piece("w", 0, 1, (end - start,), (end - start,), 0, end - start, "U8", start, end,
                 (), False, ResolvedParams({}, ()), 0, 0, 0, 0)  # fmt: skip


def test_records_round_trip_in_batches_and_later_records_win(tmp_path):
    out = resolve(str(tmp_path), output=True)
    led = Ledger(out, "k1", interval=3600)
    led.record(JobResult(0, ("a",), None, None, attempt=1))
    led.flush()
    led.record(JobResult(0, ("b",), None, None, attempt=2))
    led.record(JobResult(1, ("c",), "h", "etag-1"))
    led.flush()
    got = Ledger(out, "k1").load()
    assert got[0].checksums == ("b",) and got[0].attempt == 2
    assert got[1].receipt == "etag-1" and got[1].header_checksum == "h"
    assert Ledger(out, "other-layout").load() == {}
    led.clear()
    assert Ledger(out, "k1").load() == {}


def test_a_job_matches_only_its_recorded_bytes():
    data = memoryview(bytes(range(16)) * 2)
    job = Job(3, 0, 1, 0, 32, (piece(8, 20), piece(20, 32)), 0)
    rec = JobResult(3, (checksum(data[8:20]), checksum(data[20:32])), checksum(data[:8]), None)
    assert job_matches(job, data, rec, header_len=8)
    tampered = bytearray(data)
    tampered[25] ^= 1
    assert not job_matches(job, memoryview(bytes(tampered)), rec, header_len=8)
    assert not job_matches(job, data[:31], rec, header_len=8)
