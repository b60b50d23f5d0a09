"""The output-sink contract: how a job's byte range reaches the output, visible only on commit.

The planner fixes every shard's size and every job's byte range up front, so a sink only ever
sees *byte ranges*: :class:`ByteRange` (which shard, which S3 part, which bytes). A run goes

1. :meth:`Sink.prepare` (the driver): staging files / multipart uploads exist; ``resume`` keeps
   those of an interrupted run;
2. :meth:`Sink.write` (the workers, any order, retried freely): a range's bytes go to their final
   offsets; returns a receipt (an S3 part ETag, or None);
3. :meth:`Sink.kept` (resume): which recorded ranges are still stored as recorded;
4. :meth:`Sink.commit` (the driver): every shard appears under its final name at once; or
   :meth:`Sink.discard`: the staged bytes of an earlier run are dropped.

Nothing written before ``commit`` is visible under a final shard name. Every sink passes the same
contract tests (``tests/unit/io/test_sinks.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import xxhash


def checksum(data: bytes | memoryview) -> str:
    """xxHash64 of written bytes, hex: the manifest's checksum."""
    return xxhash.xxh64(data).hexdigest()


@dataclass(frozen=True)
class ShardSpec:
    """One output shard: final file name, total size, and how many ranges (parts) it has."""

    name: str
    size: int
    parts: int


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of shard ``shard``, written as part ``part`` (1-based, in offset order);
    ``key`` identifies the range across reruns of the same layout (the job id)."""

    key: int
    shard: int
    part: int
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


Receipt = str | None  # what a write returns and a commit needs (S3: the part's ETag)


class Sink(Protocol):
    kind: str  # "local" or "s3"

    def prepare(self, resume: bool = False) -> None: ...

    def write(self, r: ByteRange, data: memoryview) -> Receipt: ...

    def kept(
        self,
        recorded: Mapping[int, tuple[ByteRange, Receipt]],
        matches: Callable[[ByteRange, memoryview], bool],
    ) -> set[int]: ...

    def commit(self, ranges: Sequence[ByteRange], receipts: Mapping[int, Receipt]) -> None: ...

    def discard(self) -> None: ...


__all__ = ["ByteRange", "Receipt", "ShardSpec", "Sink", "checksum"]
