"""safetensors header parsing and validation: pure bytes in, typed entries out.

Format (huggingface/safetensors): an 8-byte little-endian u64 ``N``, ``N`` bytes of UTF-8 JSON,
then the data buffer. Each JSON entry ``{"dtype", "shape", "data_offsets": [BEGIN, END]}`` is
relative to the data buffer. A valid file has no duplicate names, tensors that tile the buffer
exactly (no holes, no overlap, nothing after the last one), ``END - BEGIN == numel * itemsize``,
and a header of at most 100,000,000 bytes. We check all of that before any tensor data is read, so
a corrupt or hostile input fails in seconds instead of after a long download.

This module imports no I/O library: callers hand it bytes and sizes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS_PER_FILE = 1_000_000
MAX_RANK = 16
MAX_ELEMENTS = 1 << 48  # per tensor, empty dimensions counted as 1 (a 70B embedding is 2^30)

# safetensors dtype name -> (torch dtype name, bytes per element)
ST_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "C64": ("complex64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}


class _TorchDtypes(Mapping):
    """safetensors dtype name -> (torch dtype, bytes per element); imports torch on first use,
    so planning (which needs only names and sizes) stays torch-free."""

    def __getitem__(self, key: str) -> tuple[torch.dtype, int]:
        import torch

        name, size = ST_DTYPES[key]
        return getattr(torch, name), size

    def __contains__(self, key: object) -> bool:
        return key in ST_DTYPES

    def __iter__(self) -> Iterator[str]:
        return iter(ST_DTYPES)

    def __len__(self) -> int:
        return len(ST_DTYPES)


DTYPES: Mapping[str, tuple[torch.dtype, int]] = _TorchDtypes()
# Newer sub-byte / exotic formats: recognised so the error can say "not supported" precisely.
KNOWN_UNSUPPORTED = {"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "C32"}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


def itemsize(dtype: str) -> int:
    return ST_DTYPES[dtype][1]


@dataclass(frozen=True)
class TensorSource:
    """Where one tensor's bytes live: file (name within the model folder) and absolute range."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; offsets relative to the data buffer, end exclusive."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardHeader:
    """The parsed, validated header of one safetensors file."""

    file: str
    header_len: int
    file_size: int
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    digest: str = ""  # xxHash64 of the file's bytes [0, 8 + N): the header's identity

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


class HeaderError(ValueError):
    """A safetensors header is invalid; ``problems`` lists every defect found."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        body = "\n".join(f"  - {p}" for p in shown)
        super().__init__(f"{file}: invalid safetensors file:\n{body}{more}")


def header_length(prefix: bytes, *, file: str, file_size: int) -> int:
    """Decode and bound-check the 8-byte header length at the start of a file."""
    if file_size < 8 or len(prefix) < 8:
        raise HeaderError(
            file, [f"file is {file_size} bytes, shorter than the 8-byte header length"]
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise HeaderError(file, [f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"])
    if 8 + n > file_size:
        raise HeaderError(
            file, [f"header length {n} runs past the end of the file ({file_size} bytes)"]
        )
    return n


def parse_header(raw: bytes, *, file: str, file_size: int) -> ShardHeader:
    """Parse and fully validate a header.

    ``raw`` holds at least the first ``8 + N`` bytes of the file; ``file_size`` is the file's
    total size, used to check that the tensors tile the data buffer exactly.
    """
    n = header_length(raw, file=file, file_size=file_size)
    if len(raw) < 8 + n:
        raise HeaderError(file, [f"only {len(raw)} of the {8 + n} header bytes were read"])
    try:
        text = raw[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(file, [f"header is not UTF-8: {exc}"]) from None
    if not text.lstrip().startswith("{"):
        raise HeaderError(file, ["header is not a JSON object (does not start with '{')"])
    dups: list[tuple[str, int]] = []

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                dups.append((k, id(out)))
            out[k] = v
        return out

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:  # also: ints past 4300 digits, deep nesting
        raise HeaderError(file, [f"header is not valid JSON: {str(exc)[:200]}"]) from None
    if not isinstance(obj, dict):
        raise HeaderError(file, ["header is not a JSON object"])
    if dups:
        owners = {id(v): k for k, v in obj.items() if isinstance(v, dict)}
        raise HeaderError(
            file,
            [
                f"tensor {k!r} appears twice in the header"
                if where == id(obj)
                else f"tensor {owners.get(where, '?')!r}: field {k!r} appears twice"
                for k, where in dups
            ],
        )
    metadata = obj.pop("__metadata__", None)
    problems: list[str] = []
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        problems.append("__metadata__ must map strings to strings")
        metadata = {}
    if len(obj) > MAX_TENSORS_PER_FILE:
        raise HeaderError(file, [f"{len(obj)} tensors exceed the limit of {MAX_TENSORS_PER_FILE}"])
    entries: list[TensorEntry] = []
    for name, info in obj.items():
        entry = _parse_entry(name, info, problems)
        if entry is not None:
            entries.append(entry)
    data_len = file_size - 8 - n
    problems.extend(_coverage_problems(entries, data_len))
    if problems:
        raise HeaderError(file, problems)
    entries.sort(key=lambda e: (e.begin, e.end, e.name))
    digest = xxhash.xxh64(raw[: 8 + n]).hexdigest()
    return ShardHeader(file, n, file_size, tuple(entries), dict(metadata), digest)


def _parse_entry(name: str, info: object, problems: list[str]) -> TensorEntry | None:
    where = f"tensor {name!r}"
    if not isinstance(info, dict):
        problems.append(f"{where}: entry is not an object")
        return None
    extra = set(info) - {"dtype", "shape", "data_offsets"}
    if extra:
        problems.append(f"{where}: unknown fields {sorted(extra)}")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    ok = True
    if not isinstance(dtype, str):
        problems.append(f"{where}: dtype {str(dtype)[:100]!r} is not a string")
        ok = False
    elif dtype not in ST_DTYPES:
        known = (
            ""
            if dtype not in KNOWN_UNSUPPORTED
            else " (a valid safetensors dtype that raymerge cannot merge yet)"
        )
        supported = ", ".join(ST_DTYPES)
        problems.append(f"{where}: unknown dtype {dtype!r}{known}; supported: {supported}")
        ok = False
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        problems.append(
            f"{where}: shape {_short(shape)} is not a list of at most {MAX_RANK} "
            "non-negative integers"
        )
        ok = False
    elif math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        problems.append(
            f"{where}: shape {_short(shape)} has more than 2^48 elements (counting empty "
            "dimensions as 1); no real checkpoint does"
        )
        ok = False
    if (
        not isinstance(offs, list)
        or len(offs) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
        or offs[1] < offs[0]
    ):
        problems.append(
            f"{where}: data_offsets {offs!r} are not [BEGIN, END] with 0 <= BEGIN <= END"
        )
        ok = False
    if not ok:
        return None
    entry = TensorEntry(name, dtype, tuple(shape), offs[0], offs[1])
    expected = entry.numel * itemsize(dtype)
    if entry.nbytes != expected:
        problems.append(
            f"{where}: shape {list(shape)} x {dtype} needs {expected} bytes but data_offsets "
            f"{offs} span {entry.nbytes}"
        )
        return None
    return entry


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _coverage_problems(entries: list[TensorEntry], data_len: int) -> list[str]:
    """Tensors sorted by offset must tile [0, data_len) exactly."""
    problems: list[str] = []
    pos = 0
    prev = None
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin > pos:
            problems.append(
                f"hole of {e.begin - pos} bytes before tensor {e.name!r} (offset {pos})"
            )
        elif e.begin < pos:
            problems.append(f"tensor {e.name!r} [{e.begin}, {e.end}) overlaps tensor {prev!r}")
        pos = max(pos, e.end)
        prev = e.name
    if pos > data_len:
        problems.append(
            f"tensors need {pos} data bytes but the file holds {data_len} after the header "
            "(truncated file?)"
        )
    elif pos < data_len:
        problems.append(f"{data_len - pos} unused bytes after the last tensor")
    return problems


def build_header(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[TensorEntry]]:
    """Lay out tensors in the given order; return the header bytes (incl. the length prefix).

    The JSON is padded with spaces so the data buffer starts 8-byte aligned, as the reference
    writer does. Offsets follow the given order with no gaps.
    """
    obj: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    laid: list[TensorEntry] = []
    pos = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * itemsize(dtype)
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        laid.append(TensorEntry(name, dtype, tuple(shape), pos, pos + nbytes))
        pos += nbytes
    text = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)
    return struct.pack("<Q", len(text)) + text, laid
