"""Local (or shared POSIX) outputs: preallocated staging files, ``pwrite``, atomic rename.

Each shard is a sparse file of its final size under ``OUT/.raymerge/staging/``; jobs ``pwrite``
their range at its offset (on any node of a cluster with a shared filesystem). Commit = fsync
every shard, rename it to its final name, fsync the folder. A crashed run leaves only staging
files, never a final shard name.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Mapping, Sequence

from raymerge.io.files import DiskFullError, fsync_dir
from raymerge.io.sinks.base import ByteRange, Receipt, ShardSpec
from raymerge.storage import Location

STAGING_DIR = ".raymerge/staging"


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

    def __init__(self, out: Location, shards: Sequence[ShardSpec]) -> None:
        self.root = out.path
        self.shards = [(s.name, s.size) for s in shards]

    def staging_path(self, shard: int) -> str:
        return os.path.join(self.root, STAGING_DIR, self.shards[shard][0])

    def prepare(self, resume: bool = False) -> None:
        """Create (or, resuming, keep) a preallocated staging file per shard; refuse up front
        when the filesystem cannot hold the output."""
        os.makedirs(os.path.join(self.root, STAGING_DIR), exist_ok=True)
        fresh = []
        for i, (_, size) in enumerate(self.shards):
            path = self.staging_path(i)
            os.makedirs(os.path.dirname(path), exist_ok=True)  # shards in sub-folders
            if resume and os.path.exists(path) and os.path.getsize(path) == size:
                continue
            fresh.append((path, size))
        st = os.statvfs(self.root)
        need, free = sum(size for _, size in fresh), st.f_bavail * st.f_frsize
        if need > free:
            raise DiskFullError(
                f"{self.root}: the output needs {need} bytes and its filesystem has {free} "
                "free; free space or choose another output folder"
            )
        for path, size in fresh:
            with open(path, "wb") as f:
                f.truncate(size)

    def kept(
        self,
        recorded: Mapping[int, tuple[ByteRange, Receipt]],
        matches: Callable[[ByteRange, memoryview], bool],
    ) -> set[int]:
        """Recorded ranges whose staged bytes still pass ``matches``."""
        keep: set[int] = set()
        for key, (r, _) in recorded.items():
            path = self.staging_path(r.shard)
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                f.seek(r.start)
                data = f.read(r.nbytes)
            if len(data) == r.nbytes and matches(r, memoryview(data)):
                keep.add(key)
        return keep

    def discard(self) -> None:
        """Forget staged bytes of an earlier run."""
        shutil.rmtree(os.path.join(self.root, STAGING_DIR), ignore_errors=True)

    def write(self, r: ByteRange, data: memoryview) -> Receipt:
        path = self.staging_path(r.shard)
        fd = os.open(path, os.O_WRONLY)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], r.start + done)
            _start_writeback(fd, r.start, len(data))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(
                    f"{path}: disk full writing bytes [{r.start}, {r.end}); nothing was "
                    "committed and the staged output is removed: free space and rerun"
                ) from None
            raise
        finally:
            os.close(fd)
        return None

    def commit(self, ranges: Sequence[ByteRange], receipts: Mapping[int, Receipt]) -> None:
        folders = {self.root}
        for i, (name, _) in enumerate(self.shards):
            path = self.staging_path(i)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final = os.path.join(self.root, name)
            os.makedirs(os.path.dirname(final), exist_ok=True)  # shards in sub-folders
            os.replace(path, final)
            folders.add(os.path.dirname(final))
        for folder in sorted(folders):
            fsync_dir(folder)
        for sub in sorted({os.path.dirname(n) for n, _ in self.shards}, reverse=True):
            try:
                os.rmdir(os.path.join(self.root, STAGING_DIR, sub))
            except OSError:
                pass  # not empty: leave it
