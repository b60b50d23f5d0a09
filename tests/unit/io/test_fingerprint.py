"""Input fingerprints: every store's version field is used, and a re-read sees the store now."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from raymerge.io.fingerprint import differences, from_listing
from raymerge.io.reader import read_model
from raymerge.storage import resolve


def test_hub_files_are_versioned_by_their_blob_or_lfs_hash():
    """Hub listings carry no ETag and no mtime: without the blob id / LFS sha256 a pushed
    same-size update would only be caught by the header hash."""
    lfs = {"size": 10, "blob_id": "b1", "lfs": {"sha256": "aa", "size": 10}}
    then, now = from_listing(lfs), from_listing({**lfs, "lfs": {"sha256": "bb", "size": 10}})
    assert then.etag == "aa" and differences(then, now)
    small = {"size": 10, "blob_id": "b1"}  # a small file kept in git, not LFS
    assert differences(from_listing(small), from_listing({**small, "blob_id": "b2"}))
    assert from_listing({"size": 10, "ETag": '"e"'}).etag == '"e"'  # S3 unchanged


def test_a_second_read_of_a_model_sees_the_store_now(tmp_path, monkeypatch):
    """fsspec caches listings per filesystem instance; a second read_model in one process
    (a library caller's next run, verify --inputs) must not see the first listing."""
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    loc = resolve(str(tmp_path))
    calls = []
    real = loc.fs.invalidate_cache
    monkeypatch.setattr(loc.fs, "invalidate_cache", lambda p=None: calls.append(p) or real(p))
    read_model(str(tmp_path), loc)
    assert calls and calls[0] == loc.path
