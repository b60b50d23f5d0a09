"""Reading a model folder's structure through fsspec, with small range reads only.

:func:`read_model` lists a model folder once, reads each shard's header with one or two small
range reads, validates it (:mod:`raymerge.io.header`) and cross-checks
``model.safetensors.index.json``. Tensor data is read by the workers (:mod:`raymerge.io.ranges`).

Pickle checkpoints (``.bin``/``.pt``/...) are never opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from raymerge.errors import InputError
from raymerge.io.files import read_small
from raymerge.io.fingerprint import (
    FileFingerprint,
    InputChangedError,
    check_same,
    from_listing,
)
from raymerge.io.header import (
    HeaderError,
    ShardHeader,
    TensorSource,
    header_length,
    parse_header,
)
from raymerge.redaction import redact
from raymerge.storage import Location, not_found

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The files of a tokenizer (every kind, chat templates in both layouts): copied with the other
# side files, and replaced as a whole when the output's tokenizer is another model's or new.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# Small files HF tooling reads next to the weights, copied from the reference model (the base
# model, else the first): config, generation config, the tokenizer, processor / preprocessor
# configs of multimodal models. Never weights, the input's index, pickles or the model card (the
# output gets its own).
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
SIDE_PATTERN = re.compile(r"^[\w.-]+\.tiktoken$")  # tiktoken vocabularies (Qwen, ...)
HEADER_PROBE_BYTES = 1 << 16
_SHARD_RE = re.compile(r"^model-\d+-of-\d+\.safetensors$")
MAX_INDEX_BYTES = 200_000_000


@dataclass
class ModelLayout:
    """Everything the planner needs to know about one input model, from headers only."""

    ref: str
    location: Location
    tensors: dict[str, TensorSource]
    order: list[str]
    files: dict[str, FileFingerprint]  # shards (with their header hash) and side files
    config: dict[str, Any] | None
    side_files: list[str] = field(default_factory=list)

    adapter: bool = False  # a LoRA adapter folder (adapter_config.json + adapter weights)

    def fingerprint(self) -> dict[str, Any]:
        """The input's identity for the run record, the manifest, the model card and nightly
        jobs: every shard's and side file's fingerprint."""
        files = {name: fp.as_record() for name, fp in sorted(self.files.items())}
        rec = {"model": redact(self.ref), "files": files}
        return {**rec, "kind": "lora"} if self.adapter else rec

    def read_side(self, names: list[str], max_bytes: int) -> dict[str, bytes]:
        """The side files ``names`` (those it has), each checked to be the planned version (a
        same-size edit of config.json after planning would otherwise sit beside weights
        planned from the old one)."""
        out = {}
        for name in names:
            if name not in self.side_files:
                continue
            loc = self.location.child(name)
            try:
                data = read_small(loc, max_bytes)
            except ValueError as exc:
                raise InputError(f"{loc.url}: too large for a side file ({exc})") from None
            except OSError as exc:
                raise InputError(f"{loc.url}: cannot read: {exc}") from None
            planned = self.files.get(name)
            if planned is not None and planned.size != len(data):
                raise InputChangedError(loc.url, f"size {planned.size} -> {len(data)}")
            if planned is not None:
                loc.fs.invalidate_cache(loc.path)
                info = loc.fs.info(loc.path)
                check_same(loc.url, planned, from_listing(info, loc.path if loc.is_local else None))
            out[name] = data
        return out


def _listing(loc: Location) -> dict[str, dict[str, Any]]:
    try:
        loc.fs.invalidate_cache(loc.path)  # fsspec caches listings per filesystem instance:
        # a second read of this model in one process must see the store's current ETags
        if not loc.fs.exists(loc.path):
            raise InputError(not_found(loc))
        if loc.fs.isfile(loc.path):
            raise InputError(
                f"{loc.url}: is a file; a model reference is a folder holding "
                f"{SINGLE_FILE} or {INDEX_FILE} + shards"
            )
        entries = loc.fs.ls(loc.path, detail=True)
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"{loc.url}: access denied ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - a guessed Hub repo fails in many ways offline
        if loc.hub_guess is not None:
            raise InputError(not_found(loc, f"{type(exc).__name__}: {exc}"[:300])) from None
        if isinstance(exc, OSError):
            raise InputError(f"{loc.url}: cannot list the model folder: {exc}") from None
        raise
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.get("type") == "directory":
            continue
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        local = loc.child(name).path if loc.is_local else None
        regular = e.get("type") == "file" and (
            local is None or stat.S_ISREG(os.stat(local).st_mode)
        )
        out[name] = {
            "size": int(e.get("size") or 0),
            "regular": regular,
            "fp": from_listing(e, local) if regular else FileFingerprint(0),
        }
    return out


def refuse_pickles(url: str, names: list[str]) -> None:
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    raise InputError(
        f"{url}: no safetensors checkpoint ({SINGLE_FILE} or {INDEX_FILE}) found"
        + (
            f"; only pickle files {pickles}. raymerge never unpickles checkpoints (loading a "
            "pickle runs arbitrary code). Convert them once, in an environment you trust, e.g. "
            '`python -c "import torch; from safetensors.torch import save_file; '
            "save_file(torch.load('pytorch_model.bin', weights_only=True), "
            "'model.safetensors', metadata={'format': 'pt'})\"`, or load the model with "
            "transformers and call save_pretrained(..., safe_serialization=True)."
            if pickles
            else f"; the folder holds {sorted(names)[:10]}"
        )
    )


def read_model(ref: str, loc: Location) -> ModelLayout:
    """List, read and validate every header of one model (range reads only)."""
    listing = _listing(loc)
    names = list(listing)
    if INDEX_FILE in listing:
        index = _read_index(loc, listing[INDEX_FILE]["size"])
        if not index:
            raise InputError(f"{loc.url}/{INDEX_FILE}: 'weight_map' is empty")
        shard_names = sorted(set(index.values()))
        missing = [s for s in shard_names if s not in listing]
        if missing:
            names = sorted(t for t, s in index.items() if s in missing)
            raise InputError(
                f"{loc.url}/{INDEX_FILE}: names shard(s) {missing} that do not exist in the "
                f"folder (they should hold {len(names)} tensors, e.g. {names[:3]})"
            )
        stray = sorted(n for n in listing if _SHARD_RE.match(n) and n not in shard_names)
        if stray:
            raise InputError(
                f"{loc.url}: shard(s) {stray} are not referenced by {INDEX_FILE}; the index "
                "is incomplete or the folder mixes two checkpoints"
            )
    elif SINGLE_FILE in listing:
        index = None
        shard_names = [SINGLE_FILE]
    else:
        refuse_pickles(loc.url, names)
        raise AssertionError("unreachable")

    irregular = [s for s in shard_names if not listing[s]["regular"]]
    if irregular:
        raise InputError(
            f"{loc.url}: {irregular} are not regular files (a FIFO, socket or device?); "
            "raymerge reads shards only from regular files"
        )
    headers = read_headers(loc, shard_names, {s: listing[s]["size"] for s in shard_names})
    tensors: dict[str, TensorSource] = {}
    order: list[str] = []
    dup: list[str] = []
    for shard in shard_names:
        h = headers[shard]
        for e in h.tensors:
            if e.name in tensors:
                dup.append(f"{e.name!r} in both {tensors[e.name].file} and {shard}")
                continue
            tensors[e.name] = TensorSource(
                e.name, shard, e.dtype, e.shape, h.data_start + e.begin, h.data_start + e.end
            )
            order.append(e.name)
    problems = [f"tensor {d}" for d in dup]
    if index is not None:
        for name, shard in index.items():
            if name not in tensors:
                problems.append(f"index maps {name!r} to {shard}, which does not hold it")
            elif tensors[name].file != shard:
                problems.append(f"index maps {name!r} to {shard} but it is in {tensors[name].file}")
        for name in tensors:
            if name not in index:
                problems.append(
                    f"tensor {name!r} in {tensors[name].file} is missing from the index"
                )
    if problems:
        body = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError(f"{loc.url}: inconsistent checkpoint:\n{body}{more}")
    config = _read_json(loc, "config.json", listing) if "config.json" in listing else None
    side = [f for f in SIDE_FILES if f in listing and listing[f]["regular"]]
    side += sorted(f for f in listing if SIDE_PATTERN.match(f) and listing[f]["regular"])
    files = {s: listing[s]["fp"].with_header_digest(headers[s].digest) for s in shard_names}
    files.update({s: listing[s]["fp"] for s in side})
    return ModelLayout(ref, loc, tensors, order, files, config, side)


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_adapter(ref: str, loc: Location) -> ModelLayout:
    """A PEFT adapter folder: ``adapter_config.json`` and the header of
    ``adapter_model.safetensors`` (range reads only), both fingerprinted like a model's files."""
    listing = _listing(loc)
    if ADAPTER_CONFIG not in listing or ADAPTER_WEIGHTS not in listing:
        pickles = sorted(n for n in listing if n.endswith(PICKLE_SUFFIXES))
        raise InputError(
            f"{loc.url}: not a LoRA adapter folder: needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
            + (f" (it has pickle weights {pickles}, which raymerge never opens)" if pickles else "")
        )
    if not listing[ADAPTER_WEIGHTS]["regular"]:
        raise InputError(f"{loc.url}/{ADAPTER_WEIGHTS}: not a regular file")
    size = listing[ADAPTER_WEIGHTS]["size"]
    h = read_headers(loc, [ADAPTER_WEIGHTS], {ADAPTER_WEIGHTS: size})[ADAPTER_WEIGHTS]
    tensors = {
        e.name: TensorSource(
            e.name, ADAPTER_WEIGHTS, e.dtype, e.shape, h.data_start + e.begin, h.data_start + e.end
        )
        for e in h.tensors
    }
    config = _read_json(loc, ADAPTER_CONFIG, listing)
    files = {
        ADAPTER_WEIGHTS: listing[ADAPTER_WEIGHTS]["fp"].with_header_digest(h.digest),
        ADAPTER_CONFIG: listing[ADAPTER_CONFIG]["fp"],
    }
    return ModelLayout(ref, loc, tensors, list(tensors), files, config, [], adapter=True)


def _read_json(loc: Location, name: str, listing: dict[str, dict[str, Any]]) -> dict[str, Any]:
    size = listing[name]["size"]
    if size > MAX_INDEX_BYTES:
        raise InputError(f"{loc.url}/{name}: {size} bytes is too large for a JSON side file")
    try:
        obj = json.loads(loc.fs.cat_file(loc.child(name).path))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{loc.url}/{name}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{loc.url}/{name}: expected a JSON object")
    return obj


def _read_index(loc: Location, size: int) -> dict[str, str]:
    obj = _read_json(loc, INDEX_FILE, {INDEX_FILE: {"size": size}})
    wm = obj.get("weight_map")
    if not isinstance(wm, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "/" not in v for k, v in wm.items()
    ):
        raise InputError(
            f"{loc.url}/{INDEX_FILE}: 'weight_map' must map tensor names to shard file names"
        )
    return wm


def read_headers(loc: Location, shards: list[str], sizes: dict[str, int]) -> dict[str, ShardHeader]:
    """Read every shard's header: one concurrent batch of small range reads, a second if needed."""
    paths = [loc.child(s).path for s in shards]
    ends = [min(sizes[s], HEADER_PROBE_BYTES) for s in shards]
    probes = _cat_ranges(loc, paths, [0] * len(paths), ends)
    out: dict[str, ShardHeader] = {}
    need: list[int] = []
    for i, s in enumerate(shards):
        try:
            n = header_length(probes[i], file=s, file_size=sizes[s])
        except HeaderError as exc:
            raise InputError(f"{loc.url}/{exc}") from None
        if 8 + n > len(probes[i]):
            need.append(i)
    if need:
        more = _cat_ranges(
            loc,
            [paths[i] for i in need],
            [len(probes[i]) for i in need],
            [8 + int.from_bytes(probes[i][:8], "little") for i in need],
        )
        for i, extra in zip(need, more):
            probes[i] = probes[i] + extra
    for i, s in enumerate(shards):
        try:
            out[s] = parse_header(probes[i], file=s, file_size=sizes[s])
        except HeaderError as exc:
            raise InputError(f"{loc.url}/{exc}") from None
    return out


def _cat_ranges(loc: Location, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    try:
        got = loc.fs.cat_ranges(paths, starts, ends)
    except PermissionError as exc:
        raise InputError(f"{loc.url}: access denied reading shard headers ({exc})") from None
    except OSError as exc:
        raise InputError(f"{loc.url}: cannot read shard headers: {exc}") from None
    for p, g in zip(paths, got):
        if isinstance(g, Exception):
            raise InputError(f"{p}: cannot read: {g}")
    return list(got)


__all__ = [
    "INDEX_FILE",
    "SIDE_FILES",
    "TOKENIZER_FILES",
    "ModelLayout",
    "TensorSource",
    "read_adapter",
    "read_headers",
    "read_model",
]
