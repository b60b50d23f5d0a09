"""Tests for raymerge.io.header: parsing, validation and building of safetensors headers.

Every file is built inside the test (reference writer or hand-made bytes) under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from raymerge.io.header import (
    DTYPES,
    MAX_HEADER_BYTES,
    HeaderError,
    ShardHeader,
    TensorEntry,
    build_header,
    header_length,
    parse_header,
)

READ_CAP = 1 << 20  # never read more than 1 MiB of a test file (the sparse one is ~100 MB)


def parse_path(path: Path) -> ShardHeader:
    """Parse ``path`` the way a reader would: the leading bytes plus the real file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(min(size, READ_CAP))
    return parse_header(raw, file=str(path), file_size=size)


def write_raw(path: Path, header: dict | str | bytes, data_len: int = 0) -> Path:
    """Write an 8-byte length prefix, the header (JSON-encoded if a dict) and ``data_len`` zeros."""
    if isinstance(header, dict):
        text = json.dumps(header).encode("utf-8")
    elif isinstance(header, str):
        text = header.encode("utf-8")
    else:
        text = header
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * data_len)
    return path


def expect_error(path: Path) -> HeaderError:
    with pytest.raises(HeaderError) as info:
        parse_path(path)
    exc = info.value
    assert exc.file == str(path)
    assert str(exc).startswith(f"{path}: invalid safetensors file:\n")
    for p in exc.problems[:20]:  # the message shows the first 20
        assert f"\n  - {p}" in str(exc)
    return exc


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# --------------------------------------------------------------------------------------------
# Files written by the reference implementation
# --------------------------------------------------------------------------------------------


def reference_tensors() -> dict[str, torch.Tensor]:
    return {
        "bf16": torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16),
        "f16": torch.tensor([1.5, -2.25], dtype=torch.float16),
        "f32": torch.tensor([[0.125], [3.0], [-7.5]], dtype=torch.float32),
        "i64": torch.tensor([-(2**40), 0, 2**40 + 1], dtype=torch.int64),
        "bool": torch.tensor([True, False, True, True]),
        "f8": torch.tensor([0.5, 1.0, -2.0], dtype=torch.float8_e4m3fn),
        "scalar": torch.tensor(42, dtype=torch.int64),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }


def test_parse_matches_reference_writer(tmp_path: Path) -> None:
    path = tmp_path / "ref.safetensors"
    tensors = reference_tensors()
    save_file(tensors, str(path), metadata={"format": "pt", "note": "hello"})

    h = parse_path(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    ref_json = json.loads(raw[8 : 8 + n])

    assert h.file == str(path)
    assert h.header_len == n
    assert h.data_start == 8 + n
    assert h.data_start % 8 == 0  # the reference writer pads the header
    assert h.file_size == len(raw)
    assert h.metadata == {"format": "pt", "note": "hello"}
    assert sorted(e.name for e in h.tensors) == sorted(tensors)
    # Entries come back sorted by offset, tiling the data buffer.
    assert [(e.begin, e.end) for e in h.tensors] == sorted((e.begin, e.end) for e in h.tensors)
    assert h.tensors[-1].end == len(raw) - h.data_start

    by_name = {e.name: e for e in h.tensors}
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == h.metadata
        assert sorted(f.keys()) == sorted(by_name)
        for name in f.keys():
            e = by_name[name]
            sl = f.get_slice(name)
            assert e.dtype == sl.get_dtype()
            assert list(e.shape) == sl.get_shape()
            assert [e.begin, e.end] == ref_json[name]["data_offsets"]
            t = f.get_tensor(name)
            assert e.numel == t.numel()
            assert e.nbytes == t.numel() * t.element_size()
            # The bytes at [data_start + begin, data_start + end) are exactly the tensor's.
            blob = raw[h.data_start + e.begin : h.data_start + e.end]
            assert blob == t.reshape(-1).view(torch.uint8).numpy().tobytes()

    assert by_name["scalar"].shape == ()
    assert by_name["scalar"].nbytes == 8
    assert by_name["empty"].shape == (0, 4)
    assert by_name["empty"].begin == by_name["empty"].end
    assert by_name["bf16"].dtype == "BF16"
    assert by_name["f8"].dtype == "F8_E4M3"
    assert by_name["bool"].dtype == "BOOL"


@pytest.mark.parametrize("st_name", sorted(DTYPES))
def test_every_supported_dtype_roundtrips_reference_name(tmp_path: Path, st_name: str) -> None:
    tdtype, size = DTYPES[st_name]
    path = tmp_path / "one.safetensors"
    save_file({"t": torch.arange(1, 4).to(tdtype)}, str(path))
    (e,) = parse_path(path).tensors
    assert e == TensorEntry("t", st_name, (3,), 0, 3 * size)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("t").get_dtype() == st_name
        assert f.get_tensor("t").element_size() == size


def test_file_without_metadata_and_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path))
    h = parse_path(path)
    assert h.tensors == ()
    assert h.metadata == {}
    assert h.data_start == h.file_size


def test_null_metadata_is_accepted(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "m.safetensors", {"__metadata__": None, "a": entry("U8", [2], 0, 2)}, 2
    )
    h = parse_path(path)
    assert h.metadata == {}
    assert h.tensors == (TensorEntry("a", "U8", (2,), 0, 2),)


# --------------------------------------------------------------------------------------------
# build_header
# --------------------------------------------------------------------------------------------


def test_build_header_exact_bytes() -> None:
    hdr, laid = build_header([("a", "F32", (2,)), ("b", "I64", ())])
    expected_json = (
        b'{"__metadata__":{"format":"pt"},'
        b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}'
    )
    assert len(expected_json) == 138
    # 8 + 138 = 146 -> 6 spaces of padding make the data start at byte 152.
    assert hdr == b"\x90\x00\x00\x00\x00\x00\x00\x00" + expected_json + b" " * 6
    assert len(hdr) == 152
    assert laid == [TensorEntry("a", "F32", (2,), 0, 8), TensorEntry("b", "I64", (), 8, 16)]


def test_build_header_custom_metadata_replaces_default() -> None:
    hdr, laid = build_header([("x", "U8", (3,))], {"k": "v"})
    text = b'{"__metadata__":{"k":"v"},"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}'
    assert len(text) == 78  # 8 + 78 = 86 -> 2 spaces of padding
    assert hdr == struct.pack("<Q", 80) + text + b"  "
    assert laid == [TensorEntry("x", "U8", (3,), 0, 3)]


def test_build_header_empty() -> None:
    hdr, laid = build_header([])
    text = b'{"__metadata__":{"format":"pt"}}'
    assert len(text) == 32  # 8 + 32 = 40: already aligned, no padding
    assert hdr == struct.pack("<Q", 32) + text
    assert laid == []


LAYOUTS = [
    [],
    [("a", "F32", (2,))],
    [("scalar", "BF16", ()), ("empty", "F16", (0, 5)), ("w", "F8_E4M3", (3, 1))],
    [("long.name.with.dots." * 5, "I64", (1, 2, 3)), ("m", "BOOL", (7,)), ("z", "C64", (2,))],
    [("é_unicode", "U16", (4,)), ("b", "F64", (1,))],
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=range(len(LAYOUTS)))
def test_build_header_is_aligned_and_parses_back(tmp_path: Path, layout) -> None:
    hdr, laid = build_header(layout)
    (n,) = struct.unpack("<Q", hdr[:8])
    assert n == len(hdr) - 8
    assert len(hdr) % 8 == 0
    assert hdr.rstrip(b" ").endswith(b"}")
    data_len = laid[-1].end if laid else 0
    assert [(e.name, e.dtype, e.shape) for e in laid] == layout

    path = tmp_path / "built.safetensors"
    path.write_bytes(hdr + b"\0" * data_len)
    h = parse_path(path)
    assert h.header_len == n
    assert h.data_start == len(hdr)
    assert h.metadata == {"format": "pt"}
    assert sorted(h.tensors, key=lambda e: e.name) == sorted(laid, key=lambda e: e.name)


def test_build_header_file_loads_with_reference_reader(tmp_path: Path) -> None:
    layout = [
        ("w", "BF16", (2, 3)),
        ("scalar", "F32", ()),
        ("empty", "F16", (0, 4)),
        ("ids", "I64", (5,)),
        ("mask", "BOOL", (3,)),
        ("q", "F8_E4M3", (2, 2)),
    ]
    hdr, laid = build_header(layout, {"format": "pt", "origin": "test"})
    path = tmp_path / "built.safetensors"
    path.write_bytes(hdr + b"\0" * laid[-1].end)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "origin": "test"}
        assert sorted(f.keys()) == sorted(name for name, _, _ in layout)
        for name, dtype, shape in layout:
            sl = f.get_slice(name)
            assert sl.get_dtype() == dtype
            assert sl.get_shape() == list(shape)
            t = f.get_tensor(name)
            assert t.dtype == DTYPES[dtype][0]
            assert tuple(t.shape) == shape
            assert not t.reshape(-1).view(torch.uint8).any()


# --------------------------------------------------------------------------------------------
# Hostile or broken files: HeaderError naming the file and the problem
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_8_bytes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01" * size)
    exc = expect_error(path)
    assert exc.problems == [f"file is {size} bytes, shorter than the 8-byte header length"]


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    exc = expect_error(path)
    assert exc.problems == ["header length 1000 runs past the end of the file (10 bytes)"]


def test_header_length_over_limit_uses_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    n = MAX_HEADER_BYTES + 1
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.truncate(8 + n + 16)  # sparse: no 100 MB are written
    exc = expect_error(path)
    assert exc.problems == [f"header length {n} exceeds the 100000000-byte limit"]
    # The limit is checked before the file size: a tiny file with a huge prefix says the same.
    with pytest.raises(HeaderError, match="exceeds the 100000000-byte limit"):
        header_length(struct.pack("<Q", 2**64 - 1), file="x", file_size=8)


def test_header_length_at_limit_is_accepted() -> None:
    prefix = struct.pack("<Q", MAX_HEADER_BYTES)
    assert header_length(prefix, file="x", file_size=8 + MAX_HEADER_BYTES) == MAX_HEADER_BYTES


def test_header_bytes_not_all_read() -> None:
    raw = struct.pack("<Q", 16) + b"{}"
    with pytest.raises(HeaderError) as info:
        parse_header(raw, file="part.safetensors", file_size=24)
    assert info.value.problems == ["only 10 of the 24 header bytes were read"]
    assert str(info.value).startswith("part.safetensors: ")


def test_invalid_json(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "bad.safetensors", '{"a": {"dtype": "F32",')
    exc = expect_error(path)
    assert len(exc.problems) == 1
    assert exc.problems[0].startswith("header is not valid JSON: ")


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"just a string"', "42", "null", "  [ ]"])
def test_header_not_a_json_object(tmp_path: Path, text: str) -> None:
    path = write_raw(tmp_path / "list.safetensors", text)
    exc = expect_error(path)
    assert exc.problems == ["header is not a JSON object (does not start with '{')"]


def test_non_utf8_header(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "latin.safetensors", b'{"\xff\xfe": 1}')
    exc = expect_error(path)
    assert len(exc.problems) == 1
    assert exc.problems[0].startswith("header is not UTF-8: ")
    assert "can't decode byte 0xff" in exc.problems[0]


def test_unknown_dtype(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "q7.safetensors", {"w": entry("Q7", [2], 0, 2)}, 2)
    exc = expect_error(path)
    assert exc.problems[0] == (
        "tensor 'w': unknown dtype 'Q7'; supported: BOOL, U8, I8, I16, U16, F16, BF16, I32, "
        "U32, F32, F64, I64, U64, C64, F8_E4M3, F8_E5M2"
    )
    assert "cannot merge yet" not in str(exc)


def test_known_but_unsupported_dtype_from_reference_writer(tmp_path: Path) -> None:
    path = tmp_path / "e8m0.safetensors"
    save_file({"scale": torch.ones(2, dtype=torch.float8_e8m0fnu)}, str(path))
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("scale").get_dtype() == "F8_E8M0"
    exc = expect_error(path)
    assert exc.problems[0].startswith(
        "tensor 'scale': unknown dtype 'F8_E8M0' (a valid safetensors dtype that raymerge "
        "cannot merge yet); supported: BOOL, "
    )
    assert "F8_E8M0" in str(exc)


def test_overlapping_offsets(tmp_path: Path) -> None:
    hdr = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    exc = expect_error(write_raw(tmp_path / "ov.safetensors", hdr, 12))
    assert exc.problems == ["tensor 'b' [4, 12) overlaps tensor 'a'"]


def test_identical_offsets_overlap(tmp_path: Path) -> None:
    hdr = {"a": entry("F32", [2], 0, 8), "b": entry("I32", [2], 0, 8)}
    exc = expect_error(write_raw(tmp_path / "same.safetensors", hdr, 8))
    assert exc.problems == ["tensor 'b' [0, 8) overlaps tensor 'a'"]


def test_hole_between_tensors(tmp_path: Path) -> None:
    hdr = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    exc = expect_error(write_raw(tmp_path / "hole.safetensors", hdr, 12))
    assert exc.problems == ["hole of 4 bytes before tensor 'b' (offset 4)"]


def test_hole_at_start(tmp_path: Path) -> None:
    hdr = {"a": entry("U8", [4], 3, 7)}
    exc = expect_error(write_raw(tmp_path / "hole0.safetensors", hdr, 7))
    assert exc.problems == ["hole of 3 bytes before tensor 'a' (offset 0)"]


def test_unused_trailing_bytes(tmp_path: Path) -> None:
    hdr = {"a": entry("F32", [3], 0, 12)}
    exc = expect_error(write_raw(tmp_path / "tail.safetensors", hdr, 16))
    assert exc.problems == ["4 unused bytes after the last tensor"]


def test_trailing_bytes_after_reference_file(tmp_path: Path) -> None:
    path = tmp_path / "grown.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    with open(path, "ab") as f:
        f.write(b"junk")
    exc = expect_error(path)
    assert exc.problems == ["4 unused bytes after the last tensor"]


def test_truncated_data(tmp_path: Path) -> None:
    hdr = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [2], 4, 12)}
    exc = expect_error(write_raw(tmp_path / "trunc.safetensors", hdr, 8))
    assert exc.problems == [
        "tensors need 12 data bytes but the file holds 8 after the header (truncated file?)"
    ]


def test_truncated_reference_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.ones(4)}, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    exc = expect_error(path)
    assert exc.problems == [
        "tensors need 16 data bytes but the file holds 13 after the header (truncated file?)"
    ]


def test_shape_times_dtype_differs_from_byte_length(tmp_path: Path) -> None:
    hdr = {"a": entry("F32", [3], 0, 8)}
    exc = expect_error(write_raw(tmp_path / "size.safetensors", hdr, 8))
    assert exc.problems[0] == (
        "tensor 'a': shape [3] x F32 needs 12 bytes but data_offsets [0, 8] span 8"
    )


@pytest.mark.parametrize(
    "shape",
    [[-1], [2, -3], [2.0], ["2"], [True], [None], "2", None, {"0": 2}, [1] * 17],
    ids=["neg", "neg2", "float", "str", "bool", "null", "notlist", "missing", "dict", "rank17"],
)
def test_bad_shape(tmp_path: Path, shape) -> None:
    hdr = {"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    if shape is None:
        del hdr["a"]["shape"]
    exc = expect_error(write_raw(tmp_path / "shape.safetensors", hdr, 1))
    assert exc.problems[0] == (
        f"tensor 'a': shape {shape!r} is not a list of at most 16 non-negative integers"
    )


def test_rank_16_is_accepted(tmp_path: Path) -> None:
    hdr = {"a": entry("U8", [1] * 16, 0, 1)}
    (e,) = parse_path(write_raw(tmp_path / "r16.safetensors", hdr, 1)).tensors
    assert e.shape == (1,) * 16


def test_end_before_begin(tmp_path: Path) -> None:
    hdr = {"a": entry("U8", [0], 8, 0)}
    exc = expect_error(write_raw(tmp_path / "rev.safetensors", hdr, 8))
    assert exc.problems[0] == (
        "tensor 'a': data_offsets [8, 0] are not [BEGIN, END] with 0 <= BEGIN <= END"
    )


@pytest.mark.parametrize(
    "offs", [[-4, 0], [0], [0, 4, 8], [0.0, 4.0], ["0", "4"], [False, True], None, "0,4"]
)
def test_bad_data_offsets(tmp_path: Path, offs) -> None:
    hdr = {"a": {"dtype": "U8", "shape": [4], "data_offsets": offs}}
    exc = expect_error(write_raw(tmp_path / "offs.safetensors", hdr, 4))
    assert exc.problems[0] == (
        f"tensor 'a': data_offsets {offs!r} are not [BEGIN, END] with 0 <= BEGIN <= END"
    )


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    text = (
        '{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
        ' "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    )
    exc = expect_error(write_raw(tmp_path / "dup.safetensors", text, 2))
    assert exc.problems == ["tensor 'a' appears twice in the header"]


@pytest.mark.parametrize(
    "meta", [{"format": 1}, {"format": "pt", "n": None}, {"x": ["a"]}, "pt", ["format"]]
)
def test_metadata_with_non_string_values(tmp_path: Path, meta) -> None:
    hdr = {"__metadata__": meta, "a": entry("U8", [1], 0, 1)}
    exc = expect_error(write_raw(tmp_path / "meta.safetensors", hdr, 1))
    assert exc.problems == ["__metadata__ must map strings to strings"]


def test_entry_not_an_object_and_unknown_fields(tmp_path: Path) -> None:
    hdr = {
        "a": [0, 1],
        "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "extra": 1, "more": 2},
    }
    exc = expect_error(write_raw(tmp_path / "odd.safetensors", hdr, 1))
    assert exc.problems == [
        "tensor 'a': entry is not an object",
        "tensor 'b': unknown fields ['extra', 'more']",
    ]


def test_all_problems_listed_in_one_error(tmp_path: Path) -> None:
    hdr = {
        "__metadata__": {"format": 7},
        "ok": entry("F32", [1], 0, 4),
        "bad_dtype": entry("Q7", [1], 4, 5),
        "bad_shape": entry("U8", [-2], 5, 6),
        "bad_offs": entry("U8", [0], 9, 6),
        "bad_size": entry("F16", [4], 6, 10),
        "gap": entry("U8", [2], 20, 22),
    }
    exc = expect_error(write_raw(tmp_path / "many.safetensors", hdr, 30))
    assert exc.problems[:5] == [
        "__metadata__ must map strings to strings",
        "tensor 'bad_dtype': unknown dtype 'Q7'; supported: BOOL, U8, I8, I16, U16, F16, BF16, "
        "I32, U32, F32, F64, I64, U64, C64, F8_E4M3, F8_E5M2",
        "tensor 'bad_shape': shape [-2] is not a list of at most 16 non-negative integers",
        "tensor 'bad_offs': data_offsets [9, 6] are not [BEGIN, END] with 0 <= BEGIN <= END",
        "tensor 'bad_size': shape [4] x F16 needs 8 bytes but data_offsets [6, 10] span 4",
    ]
    # Coverage is checked over the entries that survived (ok, gap).
    assert exc.problems[5:] == [
        "hole of 16 bytes before tensor 'gap' (offset 4)",
        "8 unused bytes after the last tensor",
    ]
    for p in exc.problems:
        assert f"  - {p}" in str(exc)


def test_more_than_20_problems_are_summarised(tmp_path: Path) -> None:
    hdr = {f"t{i:02d}": entry("Q7", [1], i, i + 1) for i in range(25)}
    exc = expect_error(write_raw(tmp_path / "lots.safetensors", hdr, 25))
    assert len(exc.problems) == 26  # 25 dtypes + "25 unused bytes after the last tensor"
    msg = str(exc)
    assert "tensor 't19'" in msg
    assert "tensor 't20'" not in msg
    assert msg.endswith("\n  ... and 6 more")


@pytest.mark.parametrize("meta", [[], "", 0, False])
def test_falsy_non_object_metadata_is_rejected(tmp_path: Path, meta) -> None:
    hdr = {"__metadata__": meta, "a": entry("U8", [1], 0, 1)}
    path = write_raw(tmp_path / "meta.safetensors", hdr, 1)
    with pytest.raises(SafetensorError):
        safe_open(str(path), framework="pt")  # the reference refuses it
    exc = expect_error(path)
    assert exc.problems == ["__metadata__ must map strings to strings"]


def test_duplicate_field_inside_entry_names_the_tensor(tmp_path: Path) -> None:
    text = '{"a": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    exc = expect_error(write_raw(tmp_path / "dupfield.safetensors", text, 1))
    assert "tensor 'dtype'" not in str(exc)
    assert "'a'" in str(exc)


# ------------------------------------------------------------------------------ hostile headers


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 5, None])
def test_dtype_that_is_not_a_string_is_a_clear_error(tmp_path: Path, dtype) -> None:
    exc = expect_error(write_raw(tmp_path / "d.safetensors", {"a": entry(dtype, [1], 0, 4)}, 4))
    assert exc.problems[0].startswith("tensor 'a': dtype ") and "is not a string" in exc.problems[0]


def test_huge_integer_and_deep_nesting_are_clear_errors(tmp_path: Path) -> None:
    big = write_raw(
        tmp_path / "big.safetensors", '{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + "]}}"
    )
    assert expect_error(big).problems[0].startswith("header is not valid JSON")
    deep = write_raw(tmp_path / "deep.safetensors", "{" + '"a":[' * 100_000 + "]" * 100_000 + "}")
    assert expect_error(deep).problems[0].startswith("header is not valid JSON")


def test_zero_size_tensor_with_overflowing_dimensions_is_refused(tmp_path: Path) -> None:
    """[0, 2^70] holds no bytes, but its other dimension overflows every later computation."""
    exc = expect_error(write_raw(tmp_path / "z.safetensors", {"a": entry("F32", [0, 2**70], 0, 0)}))
    assert "has more than 2^48 elements" in exc.problems[0]


def test_header_digest_is_the_hash_of_the_header_bytes(tmp_path: Path) -> None:
    import xxhash

    path = write_raw(tmp_path / "h.safetensors", {"a": entry("F32", [2], 0, 8)}, 8)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert parse_path(path).digest == xxhash.xxh64(raw[: 8 + n]).hexdigest()
