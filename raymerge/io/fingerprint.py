"""Input fingerprints: the version of every input file a run plans from, checked at every read.

A fingerprint is taken at plan time from the folder listing (size; ETag and version id on S3;
mtime and inode locally) and the header bytes already read (their xxHash64). Every job then
proves that the bytes it reads come from that version (:mod:`raymerge.io.ranges`): S3 range reads
are conditional on the planned ETag (``If-Match``) or version id; local reads compare size, mtime
and inode before the read and again after the compute (mapped pages are read lazily), and the
header hash once per file per worker process; other protocols compare size and ETag/mtime
before reading. A mismatch fails the run with :class:`InputChangedError` (exit 2) before anything
is committed. The run record and the manifest keep the fingerprints, so a rerun resumes only
when they are unchanged and ``raymerge verify --inputs`` can re-check the sources.

A local writer that restores both size and mtime after rewriting a file is not detected unless it
changes the header (there is no content hash of the tensor bytes: it would cost a pass over
every input byte).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import xxhash

from raymerge.errors import InputError


@dataclass(frozen=True)
class FileFingerprint:
    """The version of one input file."""

    size: int
    etag: str | None = None
    version_id: str | None = None
    mtime_ns: int | None = None
    inode: int | None = None
    header_xxh: str | None = None  # xxHash64 of bytes [0, 8 + N): safetensors shards only

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> FileFingerprint:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in known})

    def with_header_digest(self, digest: str) -> FileFingerprint:
        return FileFingerprint(
            self.size, self.etag, self.version_id, self.mtime_ns, self.inode, digest
        )

    def same_version(self, now: FileFingerprint) -> bool:
        """Does ``now`` (a later look at the file) show the same version? Fields either side
        lacks are not compared; the header hash only when both have one."""
        return not differences(self, now)


def header_hash(header: bytes | memoryview) -> str:
    return xxhash.xxh64(header).hexdigest()


def from_listing(info: Mapping[str, Any], local_path: str | None = None) -> FileFingerprint:
    """The fingerprint of a listed file (``fs.ls(detail=True)`` entry); local files are
    stat'ed for nanosecond mtimes and the inode."""
    if local_path is not None:
        st = os.stat(local_path)
        return FileFingerprint(st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
    lfs = info.get("lfs") if isinstance(info.get("lfs"), Mapping) else {}
    # S3: the ETag; Hugging Face Hub: the file's git blob id, or its LFS sha256 (no ETag there)
    etag = info.get("ETag") or info.get("etag") or lfs.get("sha256") or info.get("blob_id")
    version = info.get("VersionId") or info.get("version_id")
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return FileFingerprint(
        int(info.get("size") or 0),
        etag=str(etag) if etag else None,
        version_id=str(version) if version else None,
        mtime_ns=None if etag or mtime is None else _mtime_ns(mtime),
    )


def _mtime_ns(value: Any) -> int | None:
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1e9)
    try:
        return int(float(value) * 1e9)
    except (TypeError, ValueError):
        return None


def local_now(path: str) -> FileFingerprint:
    """What a local file looks like now."""
    st = os.stat(path)
    return FileFingerprint(st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def differences(planned: FileFingerprint, now: FileFingerprint) -> list[str]:
    """The fields whose values differ (only fields both have), as ``name planned -> now``."""
    out = []
    for f in fields(FileFingerprint):
        a, b = getattr(planned, f.name), getattr(now, f.name)
        if a is not None and b is not None and a != b:
            out.append(f"{f.name} {a} -> {b}")
    return out


def digest(inputs: list[Mapping[str, Any]]) -> str:
    """One hash over every input's fingerprint records (the run record's ``inputs_digest``)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


class InputChangedError(InputError):
    """An input file is not the version the run was planned from."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(
            f"{where}: changed since planning ({detail}); nothing was committed. The output "
            "would mix two versions of this model: rerun to plan from the new version"
        )
        self.where, self.detail = where, detail

    def __reduce__(self):  # pickles across Ray with its own arguments
        return type(self), (self.where, self.detail)


def check_same(where: str, planned: FileFingerprint | None, now: FileFingerprint) -> None:
    """Raise :class:`InputChangedError` unless ``now`` shows the planned version."""
    if planned is None:
        return
    diff = differences(planned, now)
    if diff:
        raise InputChangedError(where, ", ".join(diff))


__all__ = [
    "FileFingerprint",
    "InputChangedError",
    "check_same",
    "differences",
    "digest",
    "from_listing",
    "header_hash",
    "local_now",
]
