"""``raymerge verify OUT``: prove a finished output matches its manifest.

Checks, in order: ``_SUCCESS`` exists and pins the manifest's checksum; the index maps exactly
the manifest's tensors to their shards; the side files (config.json, tokenizer files, model
card) hash as recorded; OUT holds nothing else (a stray shard would load as part of the model);
every shard's header parses, its checksum matches, and each tensor's dtype, shape and offsets
equal the manifest's; every tensor/chunk byte range hashes to its recorded checksum. With
``--inputs``, every input file is still the version the output was made from.
Bytes are read in bounded ranges (local reads or concurrent ranged GETs), never a whole shard at
once, so it works on S3 outputs of any size.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from raymerge.errors import InputError, VerifyError
from raymerge.io.files import read_small
from raymerge.io.fingerprint import FileFingerprint, differences
from raymerge.io.ranges import fetch
from raymerge.io.reader import INDEX_FILE, read_adapter, read_headers, read_model
from raymerge.io.sinks.base import checksum
from raymerge.manifest import MANIFEST, parse_manifest
from raymerge.output import SUCCESS
from raymerge.redaction import MASK
from raymerge.storage import Location, resolve

BATCH_BYTES = 256 << 20


MAX_RECORD_BYTES = 1 << 30  # _SUCCESS, the index, the manifest: refused beyond this


def _small(out: Location, name: str) -> bytes:
    try:
        return read_small(out.child(name), MAX_RECORD_BYTES)
    except FileNotFoundError:
        raise VerifyError(f"{out.url}: {name} is missing") from None
    except ValueError as exc:
        raise VerifyError(f"{out.url}/{name}: {exc}") from None


def _json(out: Location, name: str) -> Any:
    try:
        obj = json.loads(_small(out, name))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise VerifyError(f"{out.url}/{name}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise VerifyError(f"{out.url}/{name}: not a JSON object")
    return obj


def verify_output(
    out: Location,
    *,
    inputs: bool = False,
    storage_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Check a finished output against its manifest; raise :class:`VerifyError` at the first
    mismatch.

    Args:
        out: the output folder.
        inputs: also check that every input file is still the version the output was made
            from (sizes, ETags/mtimes, header hashes in the manifest).
        storage_options: fsspec options by URL prefix, for reading the inputs.

    Returns:
        What was checked (pieces, bytes, shards, files, config hash, inputs).
    """
    if not out.fs.exists(out.child(SUCCESS).path):
        raise VerifyError(f"{out.url}: no {SUCCESS} marker: the run did not finish")
    success = _json(out, SUCCESS)
    if "checkpoints" in success:  # a decoder partial zip: one checkpoint per model
        return _verify_checkpoints(out, success, inputs, storage_options)
    data = _small(out, MANIFEST)
    pinned = success.get("manifest")
    if pinned and (pinned.get("size") != len(data) or pinned.get("checksum") != checksum(data)):
        raise VerifyError(f"{out.url}/{MANIFEST}: does not match the checksum {SUCCESS} pins")
    try:
        table, meta = parse_manifest(data)
    except ValueError as exc:
        raise VerifyError(f"{out.url}/{MANIFEST}: {exc}") from None
    rows = table.to_pylist()
    _check_index(out, rows)
    files = meta.get("files", {})
    _check_files(out, files)
    shards = {s["name"]: s for s in meta.get("shards", [])}
    _check_stray(out, {*files, *shards, MANIFEST, SUCCESS, INDEX_FILE})
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_shard[r["shard"]].append(r)
    _check_headers(out, shards, by_shard)
    checked, nbytes = _check_bytes(out, by_shard)
    n_inputs = check_inputs(meta.get("inputs", []), storage_options) if inputs else 0
    return {
        "pieces": checked,
        "bytes": nbytes,
        "shards": len(shards),
        "files": len(files),
        "inputs": n_inputs,
        "config_hash": meta.get("config_hash"),
    }


def _verify_checkpoints(
    out: Location,
    success: Mapping[str, Any],
    inputs: bool,
    storage_options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """An output of several checkpoints (a decoder partial zip): each folder it lists verifies
    and was written by the same run; OUT holds nothing else."""
    folders = success.get("checkpoints")
    if (
        not isinstance(folders, list)
        or not folders
        or not all(isinstance(f, str) and _FOLDER.fullmatch(f) for f in folders)
    ):
        raise VerifyError(f"{out.url}/{SUCCESS}: 'checkpoints' is not a list of folder names")
    _check_stray(out, {*folders, SUCCESS})
    each = {}
    for f in folders:
        sub = out.child(f)
        each[f] = verify_output(sub, inputs=inputs, storage_options=storage_options)
        if _json(sub, SUCCESS).get("run_id") != success.get("run_id"):
            raise VerifyError(f"{sub.url}: written by another run than {out.url}/{SUCCESS}")
    keys = ("pieces", "bytes", "shards", "files", "inputs")
    total = {k: sum(r[k] for r in each.values()) for k in keys}
    return {**total, "config_hash": success.get("config_hash"), "checkpoints": each}


_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # model_0, ...: never "..", never a path


def _check_index(out: Location, rows: list[dict[str, Any]]) -> None:
    index = _json(out, INDEX_FILE)
    want_map = {r["name"]: r["shard"] for r in rows}
    got_map = index.get("weight_map", {})
    if got_map != want_map:
        bad = sorted(set(map(str, got_map.items())) ^ set(map(str, want_map.items())))[:5]
        raise VerifyError(f"{out.url}/{INDEX_FILE}: weight_map differs from the manifest: {bad}")


def _check_files(out: Location, files: Mapping[str, Mapping[str, Any]]) -> None:
    """The side files (config.json, tokenizer, model card, index) hash as recorded."""
    for name, rec in files.items():
        data = _small(out, name)
        if len(data) != rec.get("size") or checksum(data) != rec.get("checksum"):
            raise VerifyError(
                f"{out.url}/{name}: changed since the merge (size {len(data)}, manifest says "
                f"{rec.get('size')}; or its checksum differs)"
            )


def _check_stray(out: Location, expected: set[str]) -> None:
    """Nothing but what the manifest lists (and raymerge's own folder) is in OUT: a stray shard
    beside the real ones would load as part of the model."""
    out.fs.invalidate_cache(out.path)
    names = {e.rstrip("/").rsplit("/", 1)[-1] for e in out.fs.ls(out.path, detail=False)}
    stray = sorted(names - expected - {".raymerge"})
    if stray:
        raise VerifyError(
            f"{out.url}: holds files the manifest does not list: {stray[:10]} (a stray shard "
            "would load as part of the model); remove them or merge into a fresh folder"
        )


def check_inputs(
    inputs: list[Mapping[str, Any]], storage_options: Mapping[str, Mapping[str, Any]] | None
) -> int:
    """Every input file the manifest records is still that version; returns how many."""
    n = 0
    for model in inputs:
        ref = model.get("model", "")
        if MASK in ref:
            raise VerifyError(f"{ref}: the reference holds redacted credentials; cannot re-read")
        try:
            reader = read_adapter if model.get("kind") == "lora" else read_model
            layout = reader(ref, resolve(ref, storage_options))
        except InputError as exc:
            raise VerifyError(f"input {ref}: {exc}") from None
        for name, rec in model.get("files", {}).items():
            then = FileFingerprint.from_record(rec)
            now = layout.files.get(name)
            if now is None:
                raise VerifyError(f"input {ref}/{name}: no longer there")
            diff = differences(then, now)
            if diff:
                raise VerifyError(
                    f"input {ref}/{name}: changed since the merge ({', '.join(diff)})"
                )
            n += 1
    return n


def _check_headers(out: Location, shards: dict[str, Any], by_shard: dict[str, list]) -> None:
    """Every shard exists with its size; its header parses, hashes as recorded, and places every
    tensor where the manifest says."""
    fs = out.fs
    missing = [name for name in shards if not fs.exists(out.child(name).path)]
    if missing:
        raise VerifyError(f"{out.url}: shard(s) {missing} listed in the manifest are missing")
    sizes = {name: fs.size(out.child(name).path) for name in shards}
    for name, s in shards.items():
        if sizes[name] != s["size"]:
            raise VerifyError(f"{out.url}/{name}: {sizes[name]} bytes, manifest says {s['size']}")
    try:
        headers = read_headers(out, list(shards), sizes)
    except InputError as exc:
        raise VerifyError(str(exc)) from None
    for name, h in headers.items():
        raw = fetch(out, [(name, 0, h.data_start)])[0]
        if checksum(raw) != shards[name]["header_checksum"]:
            raise VerifyError(f"{out.url}/{name}: header checksum mismatch")
        entries = {e.name: e for e in h.tensors}
        for r in by_shard[name]:
            e = entries.get(r["name"])
            if e is None:
                raise VerifyError(f"{out.url}/{name}: tensor {r['name']!r} missing from the header")
            if r["chunk"] == 0 and (
                e.dtype != r["dtype"]
                or list(e.shape) != list(r["shape"])
                or h.data_start + e.begin != r["out_start"]
            ):
                raise VerifyError(
                    f"{out.url}/{name}: tensor {r['name']!r}: header says {e.dtype} "
                    f"{list(e.shape)} at {h.data_start + e.begin}, manifest says {r['dtype']} "
                    f"{list(r['shape'])} at {r['out_start']}"
                )
        if set(entries) != {r["name"] for r in by_shard[name]}:
            raise VerifyError(f"{out.url}/{name}: header holds tensors the manifest does not list")


def _batches(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive rows in ranges of at most ``BATCH_BYTES`` (one row may be larger)."""
    out: list[list[dict[str, Any]]] = []
    size = 0
    for r in sorted(rows, key=lambda r: r["out_start"]):
        n = r["out_end"] - r["out_start"]
        if out and size + n <= BATCH_BYTES:
            out[-1].append(r)
            size += n
        else:
            out.append([r])
            size = n
    return out


def _check_bytes(out: Location, by_shard: dict[str, list]) -> tuple[int, int]:
    """Every tensor/chunk byte range hashes to its recorded checksum, read in bounded ranges."""
    checked = nbytes = 0
    for name, shard_rows in by_shard.items():
        for batch in _batches(shard_rows):
            lo = batch[0]["out_start"]
            block = memoryview(fetch(out, [(name, lo, batch[-1]["out_end"])])[0])
            for b in batch:
                data = block[b["out_start"] - lo : b["out_end"] - lo]
                if checksum(data) != b["checksum"]:
                    raise VerifyError(
                        f"{out.url}/{name}: tensor {b['name']!r} (chunk {b['chunk']}) bytes "
                        f"[{b['out_start']}, {b['out_end']}) do not match the manifest checksum"
                    )
                checked += 1
                nbytes += len(data)
    return checked, nbytes
