"""Output sinks behind one contract (:mod:`raymerge.io.sinks.base`), one file per backend.

The backends are imported by :func:`make_sink` only, so the planner's use of the contract's
records (:class:`ByteRange`, :class:`ShardSpec`) loads no backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from raymerge.errors import OutputError
from raymerge.io.sinks.base import ByteRange, Receipt, ShardSpec, Sink, checksum
from raymerge.storage import Location


def make_sink(out: Location, shards: Sequence[ShardSpec]) -> Sink:
    """The sink for ``out``: local/shared folders and S3; other protocols are refused."""
    if out.is_local:
        from raymerge.io.sinks.local import LocalSink

        return LocalSink(out, shards)
    if out.protocol in ("s3", "s3a"):
        from raymerge.io.sinks.s3 import S3Sink

        return S3Sink(out, shards)
    raise OutputError(
        f"{out.url}: output to {out.protocol}:// is not supported; write to a local/shared "
        "folder or s3:// (inputs may use any fsspec protocol)"
    )


__all__ = ["ByteRange", "Receipt", "ShardSpec", "Sink", "checksum", "make_sink"]
