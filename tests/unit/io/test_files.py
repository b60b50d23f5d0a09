"""Small files: atomic writes that leave no temp file, bounded reads, disk-full errors."""

from __future__ import annotations

import os

import pytest

from raymerge.io.files import DiskFullError, read_small, write_small
from raymerge.storage import resolve


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    out = resolve(str(tmp_path), output=True)

    def crash(src, dst):
        raise OSError("crashed mid-rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crashed"):
        write_small(out, "manifest.parquet", b"x" * 100)
    assert os.listdir(tmp_path) == []


def test_disk_full_is_named_and_cleans_up(tmp_path):
    out = resolve(str(tmp_path), output=True)
    os.symlink("/dev/full", tmp_path / f"README.md.tmp-{os.getpid()}")  # writes there: ENOSPC
    with pytest.raises(DiskFullError, match=r"disk full"):
        write_small(out, "README.md", b"x" * 100)
    assert os.listdir(tmp_path) == []


def test_reads_are_bounded(tmp_path):
    (tmp_path / "big.json").write_bytes(b"{}" * 100)
    with pytest.raises(ValueError, match=r"200 bytes, more than the 10 allowed"):
        read_small(resolve(str(tmp_path / "big.json")), 10)
    assert read_small(resolve(str(tmp_path / "big.json")), 200) == b"{}" * 100
