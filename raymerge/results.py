"""What jobs and statistics tasks report back to the driver: small typed records.

Tensor bytes never travel back: a job writes its own output range and returns checksums,
timings and counters (:class:`JobResult`); a statistics task returns the additive partial
statistics of one chunk (:class:`StatsResult`). Job results are what the ledger stores for
resume (as JSON, :meth:`JobResult.as_record`) and what the manifest's per-job columns hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from raymerge.io.sinks.base import Receipt


@dataclass(frozen=True)
class JobResult:
    """One finished job. Timings: ``read_s + compute_s + write_s <= wall_s``, all of this job
    alone (``wall_s``: from the job's start to its last byte written)."""

    job: int
    checksums: tuple[str, ...]  # one per piece, of its output bytes
    header_checksum: str | None  # the shard header's, for the first job of a shard
    receipt: Receipt  # what the sink returned (S3: the part's ETag)
    attempt: int = 1
    read_s: float = 0.0
    compute_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    bytes_read: int = 0  # from storage; the rest of the job's inputs were kept in memory
    bytes_reused: int = 0
    bytes_written: int = 0
    rss_peak: int = 0
    storage_retries: int = 0
    node: str = ""
    host: str = ""
    pid: int = 0
    reused: bool = False  # kept from an interrupted run (resume), not computed by this one

    def placed(self, node: str, host: str, pid: int) -> JobResult:
        return replace(self, node=node, host=host, pid=pid)

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready dict (the ledger's format)."""
        out = asdict(self)
        out["checksums"] = list(self.checksums)
        return out

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> JobResult:
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in rec.items() if k in known}
        body["checksums"] = tuple(body.get("checksums", ()))
        return cls(**body)


@dataclass(frozen=True)
class StatsResult:
    """Partial whole-tensor statistics of one chunk, for one round."""

    stats: dict[str, Any]  # name -> torch.Tensor (additive partials, see methods.base)
    bytes_read: int
    storage_retries: int
    attempt: int = 1
    node: str = ""

    def placed(self, node: str) -> StatsResult:
        return replace(self, node=node)


@dataclass
class ExecResult:
    """What running a plan's jobs gave: every job's result and the run's counters."""

    results: dict[int, JobResult]
    retries: int
    nodes: list[str]
    seconds: float
    stats_bytes_read: int = 0  # read from storage by statistics rounds (jobs: in results)
    stats_storage_retries: int = 0  # storage requests they retried
    kept_peak_bytes: int = 0  # most chunk bytes held in the object store between reads


__all__ = ["ExecResult", "JobResult", "StatsResult"]
