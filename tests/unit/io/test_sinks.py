"""The output-sink contract, one suite every sink passes (local, S3), like fsspec's abstract
tests: ranges written in any order and retried freely, nothing visible before the commit,
discard leaves nothing, resume keeps exactly the ranges still stored as recorded."""

from __future__ import annotations

import os

import pytest

from raymerge.io.sinks import ByteRange, ShardSpec, checksum, make_sink
from raymerge.storage import resolve

MiB = 1 << 20
# two shards; S3 parts other than a shard's last must be >= 5 MiB
SIZES = [(5 * MiB, 5 * MiB, 1234), (7 * MiB,)]


def layout():
    ranges, shards, key = [], [], 0
    for si, parts in enumerate(SIZES):
        pos = 0
        for pi, n in enumerate(parts, start=1):
            ranges.append(ByteRange(key, si, pi, pos, pos + n))
            key += 1
            pos += n
        shards.append(
            ShardSpec(f"model-{si + 1:05d}-of-{len(SIZES):05d}.safetensors", pos, len(parts))
        )
    return shards, ranges


def payload(r: ByteRange, salt: int = 0) -> memoryview:
    return memoryview(
        bytes([(r.key * 37 + salt + i) % 251 for i in range(251)]) * (r.nbytes // 251 + 1)
    )[: r.nbytes]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def target(request, tmp_path):
    """(output Location, list names at its top level, read a final object)."""
    if request.param == "local":
        out = resolve(str(tmp_path / "out"), output=True)

        def names():
            return sorted(os.listdir(out.path)) if os.path.isdir(out.path) else []

        return out, names, lambda n: (tmp_path / "out" / n).read_bytes()
    s3 = request.getfixturevalue("s3")
    out = resolve("s3://sinks/out", {"s3://": s3}, output=True)
    out.fs.mkdir("sinks")

    def names():
        out.fs.invalidate_cache()
        found = out.fs.ls("sinks/out", detail=False) if out.fs.exists("sinks/out") else []
        return sorted(p.rsplit("/", 1)[-1] for p in found)

    return out, names, lambda n: out.fs.cat_file(f"sinks/out/{n}")


def test_ranges_in_any_order_and_retried_commit_to_exact_shards(target):
    out, names, read = target
    shards, ranges = layout()
    sink = make_sink(out, shards)
    sink.prepare()
    receipts = {}
    for r in reversed(ranges):
        sink.write(r, payload(r, salt=1))  # a first attempt, with other bytes
        receipts[r.key] = sink.write(r, payload(r))  # the retry rewrites the same range
    assert not [n for n in names() if n.endswith(".safetensors")]  # nothing visible yet
    sink.commit(ranges, receipts)
    for si, s in enumerate(shards):
        want = b"".join(bytes(payload(r)) for r in ranges if r.shard == si)
        assert read(s.name) == want


def test_discard_leaves_no_shard(target):
    out, names, _ = target
    shards, ranges = layout()
    sink = make_sink(out, shards)
    sink.prepare()
    sink.write(ranges[0], payload(ranges[0]))
    sink.discard()
    assert not [n for n in names() if n.endswith(".safetensors")]


def test_resume_keeps_exactly_the_ranges_stored_as_recorded(target):
    out, _, read = target
    shards, ranges = layout()
    first = make_sink(out, shards)
    first.prepare()
    recorded = {}
    for r in ranges[:3]:
        recorded[r.key] = (r, first.write(r, payload(r)))
    tampered = ranges[1]
    first.write(tampered, payload(tampered, salt=7))  # rewritten after being recorded
    again = make_sink(out, shards)
    again.prepare(resume=True)

    def matches(r, data):
        return checksum(data) == checksum(payload(r))

    assert again.kept(recorded, matches) == {ranges[0].key, ranges[2].key}
    receipts = {k: rec for k, (_, rec) in recorded.items() if k != tampered.key}
    for r in ranges:
        if r.key not in receipts:
            receipts[r.key] = again.write(r, payload(r))
    again.commit(ranges, receipts)
    for si, s in enumerate(shards):
        assert read(s.name) == b"".join(bytes(payload(r)) for r in ranges if r.shard == si)
