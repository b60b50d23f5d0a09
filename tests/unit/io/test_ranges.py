"""Byte-range reads (raymerge.io.ranges): decoding without copies, mapped local files, and the
fallback for filesystems that cannot map."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from raymerge.io.header import DTYPES
from raymerge.io.ranges import decode, fetch
from raymerge.storage import resolve


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0, 2)])
def test_decode_empty(dtype: str, shape: tuple[int, ...]) -> None:
    for buf in (b"", bytearray(), memoryview(b"")):
        t = decode(buf, dtype, shape)
        assert t.dtype == DTYPES[dtype][0]
        assert tuple(t.shape) == shape
        assert t.numel() == 0


@pytest.mark.parametrize(
    "dtype, value",
    [
        ("F32", torch.tensor(3.5)),
        ("F64", torch.tensor(-0.25, dtype=torch.float64)),
        ("F16", torch.tensor(1.5, dtype=torch.float16)),
        ("BF16", torch.tensor(-2.0, dtype=torch.bfloat16)),
        ("I64", torch.tensor(-(2**40), dtype=torch.int64)),
        ("I32", torch.tensor(123456, dtype=torch.int32)),
        ("U8", torch.tensor(255, dtype=torch.uint8)),
        ("BOOL", torch.tensor(True)),
        ("F8_E4M3", torch.tensor(0.5, dtype=torch.float8_e4m3fn)),
        ("C64", torch.tensor(1 + 2j, dtype=torch.complex64)),
    ],
)
def test_decode_rank0(dtype: str, value: torch.Tensor) -> None:
    buf = value.reshape(1).view(torch.uint8).numpy().tobytes()
    assert len(buf) == DTYPES[dtype][1]
    t = decode(buf, dtype, ())
    assert t.shape == ()
    assert_same(t, value)


def test_decode_exact_values_and_aliasing() -> None:
    buf = bytearray(struct.pack("<3f", 1.0, -2.5, 0.125))
    t = decode(buf, "F32", (3,))
    assert t.tolist() == [1.0, -2.5, 0.125]
    buf[0:4] = struct.pack("<f", 9.0)  # no copy: the tensor sees the change
    assert t.tolist() == [9.0, -2.5, 0.125]
    t2 = decode(memoryview(bytes(struct.pack("<2q", -1, 2**62))), "I64", (2, 1))
    assert t2.tolist() == [[-1], [2**62]]


# --------------------------------------------------------------------------------------------
# Job-side reads (memory-mapped local inputs) and output buffers
# --------------------------------------------------------------------------------------------


def test_local_fetch_maps_exact_ranges_without_touching_the_file(tmp_path: Path) -> None:

    blob = bytes(range(256)) * 40_000  # ~10 MB: ranges past the first mapping granule
    (tmp_path / "a").write_bytes(blob)
    (tmp_path / "b").write_bytes(blob[::-1])
    ranges = [("a", 3, 11), ("b", 0, 4), ("a", 5_000_001, 5_000_017), ("a", 7, 7), ("b", 9, 13)]
    got = fetch(resolve(str(tmp_path)), ranges)
    assert [bytes(g) for g in got] == [
        blob[3:11],
        blob[::-1][0:4],
        blob[5_000_001:5_000_017],
        b"",
        blob[::-1][9:13],
    ]
    t = decode(got[2], "U8", (16,))
    t.fill_(0)  # a stray in-place write stays in this process (copy-on-write mapping)
    assert (tmp_path / "a").read_bytes() == blob


def test_local_fetch_of_a_file_that_shrank_is_a_short_read(tmp_path: Path) -> None:

    (tmp_path / "a").write_bytes(b"x" * 100)
    with pytest.raises(OSError, match=r"a: short read at \[90, 120\): the file holds 100 bytes"):
        fetch(resolve(str(tmp_path)), [("a", 0, 10), ("a", 90, 120)])


def test_local_fetch_reads_where_the_filesystem_cannot_map(tmp_path: Path, monkeypatch) -> None:
    import mmap

    blob = bytes(range(256)) * 100
    (tmp_path / "a").write_bytes(blob)
    ranges = [("a", 3, 11), ("a", 20_000, 25_600), ("a", 9, 9)]
    want = [bytes(g) for g in fetch(resolve(str(tmp_path)), ranges)]

    def no_mmap(*args, **kwargs):
        raise OSError(19, "No such device")  # what FUSE filesystems without mmap answer

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    got = fetch(resolve(str(tmp_path)), ranges)
    assert [bytes(g) for g in got] == want == [blob[3:11], blob[20_000:25_600], b""]
