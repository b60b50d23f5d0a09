"""Output shards: where job bytes go, and how a shard becomes visible only when complete.

The planner fixes every shard's header and every tensor's offset up front, so each job knows the
exact byte range [out_start, out_end) it owns and no tensor ever passes through the driver.

Two sinks, chosen by the output URL:

- :class:`LocalSink` (local or shared POSIX filesystem): each shard is preallocated under
  ``OUT/.raymerge/staging/`` and jobs ``pwrite`` their range at its offset. Commit = fsync +
  atomic rename to the final name. A crashed run leaves only staging files, never a final name.
- :class:`S3Sink` (``s3://``): one S3 multipart upload per shard, created by the driver. A job's
  range is exactly one part (part number = the job's ordinal in its shard; the planner keeps all
  but the last part at least 5 MiB), uploaded directly by the worker that computed it. So no
  process ever holds more than one job's bytes (<= the job size target, 64 MiB by default),
  retried jobs simply re-upload their part, and the object appears under its final key only when
  the driver completes the upload. On failure the uploads stay open (their ids are saved in
  ``.raymerge/uploads.json``) so a rerun can keep the parts already uploaded; a run that discards
  them (``--overwrite``, a changed job layout) aborts them. S3 forbids more than
  10,000 parts: the job size target keeps a 5 GB shard near 80.

Other fsspec protocols are refused for output with a message (their multipart semantics differ);
inputs may come from any protocol.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import xxhash

from raymerge.errors import OutputError
from raymerge.plan import Job, ShardPlan
from raymerge.storage import Location

STAGING_DIR = ".raymerge/staging"
UPLOADS_FILE = ".raymerge/uploads.json"
MAX_S3_PARTS = 10_000


def checksum(data: bytes | memoryview) -> str:
    """xxHash64 of written bytes, hex; the manifest's checksum."""
    return xxhash.xxh64(data).hexdigest()


def job_matches(
    job: Job, data: bytes | memoryview, record: dict[str, Any], header_len: int
) -> bool:
    """Do ``data`` (the job's byte range) match the checksums recorded for it?"""
    view = memoryview(data)
    if len(view) != job.nbytes or len(record.get("checksums", ())) != len(job.pieces):
        return False
    if job.part == 1 and checksum(view[:header_len]) != record.get("header_checksum"):
        return False
    return all(
        checksum(view[p.out_start - job.out_start : p.out_end - job.out_start]) == c
        for p, c in zip(job.pieces, record["checksums"])
    )


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing [offset, offset + length) of ``fd`` to disk without waiting (Linux:
    fadvise DONTNEED starts writeback of the range's dirty pages and keeps them; only clean
    pages are dropped), so the commit's fsync finds most of the shard on disk already instead
    of flushing it all at the end, serially, after the last job."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # advice only


class LocalSink:
    kind = "local"

    def __init__(self, out: Location, shards: list[ShardPlan]) -> None:
        self.root = out.path
        self.shards = [(s.name, s.size) for s in shards]

    def staging_path(self, shard: int) -> str:
        return os.path.join(self.root, STAGING_DIR, self.shards[shard][0])

    def prepare(self, resume: bool = False) -> None:
        """Create (or, resuming, keep) a preallocated staging file per shard."""
        os.makedirs(os.path.join(self.root, STAGING_DIR), exist_ok=True)
        for i, (_, size) in enumerate(self.shards):
            path = self.staging_path(i)
            if resume and os.path.exists(path) and os.path.getsize(path) == size:
                continue
            with open(path, "wb") as f:
                f.truncate(size)

    def kept(
        self, jobs: list[Job], records: dict[int, dict[str, Any]], headers: list[int]
    ) -> set[int]:
        """Recorded jobs whose staged bytes still match their checksums."""
        keep: set[int] = set()
        for job in jobs:
            rec = records.get(job.id)
            path = self.staging_path(job.shard)
            if rec is None or not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                f.seek(job.out_start)
                data = f.read(job.nbytes)
            if job_matches(job, data, rec, headers[job.shard]):
                keep.add(job.id)
        return keep

    def discard(self) -> None:
        """Forget staged bytes of an earlier run."""
        shutil.rmtree(os.path.join(self.root, STAGING_DIR), ignore_errors=True)

    def write(self, job: Job, data: memoryview) -> dict[str, Any]:
        fd = os.open(self.staging_path(job.shard), os.O_WRONLY)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], job.out_start + done)
            _start_writeback(fd, job.out_start, len(data))
        finally:
            os.close(fd)
        return {}

    def commit(self, results: dict[int, dict[str, Any]], jobs: list[Job]) -> None:
        for i, (name, _) in enumerate(self.shards):
            path = self.staging_path(i)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path, os.path.join(self.root, name))
        _fsync_dir(self.root)
        try:
            os.rmdir(os.path.join(self.root, STAGING_DIR))
        except OSError:
            pass  # not empty: leave it


class S3Sink:
    kind = "s3"

    def __init__(self, out: Location, shards: list[ShardPlan], jobs: list[Job]) -> None:
        self.out = out
        self.fs = out.fs
        bucket, key, _ = out.fs.split_path(out.path)
        self.bucket = bucket
        self.keys = [f"{key}/{s.name}".lstrip("/") for s in shards]
        self.uploads: list[str] = []
        parts: dict[int, int] = {}
        for j in jobs:
            parts[j.shard] = parts.get(j.shard, 0) + 1
        if parts and max(parts.values()) > MAX_S3_PARTS:
            raise OutputError(
                f"a shard needs {max(parts.values())} upload parts, above S3's limit of "
                f"{MAX_S3_PARTS}: raise --job-bytes or lower --shard-size"
            )

    def _previous(self) -> list[str] | None:
        path = self.out.child(UPLOADS_FILE).path
        if not self.fs.exists(path):
            return None
        prev = json.loads(self.fs.cat_file(path))
        return prev["uploads"] if prev.get("keys") == self.keys else None

    def _parts(self, shard: int) -> dict[int, dict[str, Any]] | None:
        """Uploaded parts of a shard's open upload, or None if the upload is gone."""
        parts: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            try:
                resp = self.fs.call_s3(
                    "list_parts",
                    Bucket=self.bucket,
                    Key=self.keys[shard],
                    UploadId=self.uploads[shard],
                    PartNumberMarker=marker,
                )
            except (FileNotFoundError, OSError):
                return None
            for p in resp.get("Parts", []):
                parts[int(p["PartNumber"])] = p
            if not resp.get("IsTruncated"):
                return parts
            marker = int(resp["NextPartNumberMarker"])

    def prepare(self, resume: bool = False) -> None:
        """Open one multipart upload per shard, or, resuming, reuse the ones still open."""
        prev = self._previous() if resume else None
        self.uploads = list(prev) if prev else []
        self.alive = [False] * len(self.keys)
        for shard, key in enumerate(self.keys):
            if prev and self._parts(shard) is not None:
                self.alive[shard] = True
                continue
            resp = self.fs.call_s3("create_multipart_upload", Bucket=self.bucket, Key=key)
            if shard < len(self.uploads):
                self.uploads[shard] = resp["UploadId"]
            else:
                self.uploads.append(resp["UploadId"])
        write_json(self.out, UPLOADS_FILE, {"keys": self.keys, "uploads": self.uploads})

    def kept(
        self, jobs: list[Job], records: dict[int, dict[str, Any]], headers: list[int]
    ) -> set[int]:
        """Recorded jobs whose part is in the open upload with the recorded ETag and size."""
        keep: set[int] = set()
        for shard in range(len(self.keys)):
            parts = self._parts(shard) if self.alive[shard] else None
            if not parts:
                continue
            for job in jobs:
                rec = records.get(job.id)
                part = parts.get(job.part) if job.shard == shard else None
                if (
                    rec
                    and part
                    and part["ETag"] == rec.get("etag")
                    and int(part["Size"]) == job.nbytes
                ):
                    keep.add(job.id)
        return keep

    def discard(self) -> None:
        """Abort the multipart uploads of an earlier run."""
        for key, upload in zip(self.keys, self._previous() or []):
            try:
                self.fs.call_s3(
                    "abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload
                )
            except (FileNotFoundError, OSError):
                pass  # already gone

    def write(self, job: Job, data: memoryview) -> dict[str, Any]:
        resp = self.fs.call_s3(
            "upload_part",
            Bucket=self.bucket,
            Key=self.keys[job.shard],
            UploadId=self.uploads[job.shard],
            PartNumber=job.part,
            Body=bytes(data),
        )
        return {"etag": resp["ETag"]}

    def commit(self, results: dict[int, dict[str, Any]], jobs: list[Job]) -> None:
        for shard, key in enumerate(self.keys):
            parts = [
                {"PartNumber": j.part, "ETag": results[j.id]["etag"]}
                for j in sorted(jobs, key=lambda j: j.part)
                if j.shard == shard
            ]
            self.fs.call_s3(
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=key,
                UploadId=self.uploads[shard],
                MultipartUpload={"Parts": parts},
            )
        self.fs.invalidate_cache()
        self.fs.rm(self.out.child(UPLOADS_FILE).path)


def make_sink(out: Location, shards: list[ShardPlan], jobs: list[Job]) -> LocalSink | S3Sink:
    if out.is_local:
        return LocalSink(out, shards)
    if out.protocol in ("s3", "s3a"):
        return S3Sink(out, shards, jobs)
    raise OutputError(
        f"{out.url}: output to {out.protocol}:// is not supported; write to a local/shared "
        "folder or s3:// (inputs may use any fsspec protocol)"
    )


def write_small(out: Location, name: str, data: bytes) -> None:
    """Write a small file atomically: temp + rename locally, a single PUT on object stores."""
    loc = out.child(name)
    if out.is_local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = f"{loc.path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
    else:
        out.fs.pipe_file(loc.path, data)


def write_json(out: Location, name: str, obj: Any) -> None:
    write_small(out, name, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def index_json(shards: list[ShardPlan]) -> dict[str, Any]:
    """``model.safetensors.index.json``: total tensor bytes and the tensor -> shard map."""
    total = sum(s.size - len(s.header) for s in shards)
    weight_map = {t: s.name for s in shards for t in s.tensors}
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
