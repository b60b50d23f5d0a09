"""S3 outputs: one multipart upload per shard, one part per byte range.

The driver opens one multipart upload per shard. A byte range is exactly one part (part number
= its ordinal in the shard; the planner keeps all but a shard's last part at least 5 MiB),
uploaded by the worker that computed it, so no process ever holds more than one job's bytes,
a retried job simply re-uploads its part, and the object appears under its final key only when
the driver completes the upload. On failure the uploads stay open (their ids are saved in
``.raymerge/uploads.json``) so a rerun can keep the parts already uploaded; a run that discards
them (``--overwrite``, a changed job layout) aborts them. S3 allows at most 10,000 parts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from raymerge.errors import OutputError
from raymerge.io.files import write_json
from raymerge.io.sinks.base import ByteRange, Receipt, ShardSpec
from raymerge.storage import Location

UPLOADS_FILE = ".raymerge/uploads.json"
MAX_S3_PARTS = 10_000


class S3Sink:
    kind = "s3"

    def __init__(self, out: Location, shards: Sequence[ShardSpec]) -> None:
        self.out = out
        self.fs = out.fs
        bucket, key, _ = out.fs.split_path(out.path)
        self.bucket = bucket
        self.keys = [f"{key}/{s.name}".lstrip("/") for s in shards]
        self.uploads: list[str] = []
        self.alive: list[bool] = []
        most = max((s.parts for s in shards), default=0)
        if most > MAX_S3_PARTS:
            raise OutputError(
                f"a shard needs {most} upload parts, above S3's limit of {MAX_S3_PARTS}: raise "
                "--job-bytes or lower --shard-size"
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
        self,
        recorded: Mapping[int, tuple[ByteRange, Receipt]],
        matches: Callable[[ByteRange, memoryview], bool],
    ) -> set[int]:
        """Recorded ranges whose part is in the open upload with the recorded ETag and size
        (the ETag is the part's MD5: ``matches`` is not needed)."""
        keep: set[int] = set()
        listed = {s: self._parts(s) for s in range(len(self.keys)) if self.alive[s]}
        for key, (r, etag) in recorded.items():
            part = (listed.get(r.shard) or {}).get(r.part)
            if part and etag and part["ETag"] == etag and int(part["Size"]) == r.nbytes:
                keep.add(key)
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

    def write(self, r: ByteRange, data: memoryview) -> Receipt:
        resp = self.fs.call_s3(
            "upload_part",
            Bucket=self.bucket,
            Key=self.keys[r.shard],
            UploadId=self.uploads[r.shard],
            PartNumber=r.part,
            Body=bytes(data),
        )
        return resp["ETag"]

    def commit(self, ranges: Sequence[ByteRange], receipts: Mapping[int, Receipt]) -> None:
        for shard, key in enumerate(self.keys):
            parts = [
                {"PartNumber": r.part, "ETag": receipts[r.key]}
                for r in sorted(ranges, key=lambda r: r.part)
                if r.shard == shard
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
