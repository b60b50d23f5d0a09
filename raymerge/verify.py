"""``raymerge verify OUT``: prove a finished output matches its manifest.

Checks, in order: ``_SUCCESS`` exists; the index maps exactly the manifest's tensors to their
shards; every shard's header parses, its checksum matches, and each tensor's dtype, shape and
offsets equal the manifest's; every tensor/chunk byte range hashes to its recorded checksum.
Bytes are read in bounded ranges (local reads or concurrent ranged GETs), never a whole shard at
once, so it works on S3 outputs of any size.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from raymerge.errors import InputError, VerifyError
from raymerge.io.ranges import fetch
from raymerge.io.reader import INDEX_FILE, read_headers
from raymerge.io.sinks.base import checksum
from raymerge.manifest import MANIFEST, read_manifest
from raymerge.output import SUCCESS
from raymerge.storage import Location

BATCH_BYTES = 256 << 20


def verify_output(out: Location) -> dict[str, Any]:
    """Check a finished output against its manifest; raise :class:`VerifyError` at the first
    mismatch. Returns what was checked (pieces, bytes, shards, config hash)."""
    fs = out.fs
    if not fs.exists(out.child(SUCCESS).path):
        raise VerifyError(f"{out.url}: no {SUCCESS} marker: the run did not finish")
    marker = json.loads(fs.cat_file(out.child(SUCCESS).path))
    if marker.get("checkpoints") and not fs.exists(out.child(MANIFEST).path):
        return _verify_checkpoints(out, marker["checkpoints"])
    if not fs.exists(out.child(MANIFEST).path):
        raise VerifyError(f"{out.url}: {MANIFEST} is missing")
    table, meta = read_manifest(out)
    rows = table.to_pylist()
    _check_index(out, rows)
    shards = {s["name"]: s for s in meta.get("shards", [])}
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_shard[r["shard"]].append(r)
    _check_headers(out, shards, by_shard)
    checked, nbytes = _check_bytes(out, by_shard)
    return {
        "pieces": checked,
        "bytes": nbytes,
        "shards": len(shards),
        "config_hash": meta.get("config_hash"),
    }


def _verify_checkpoints(out: Location, folders: list[str]) -> dict[str, Any]:
    """An output of several checkpoints (a decoder partial zip): verify each folder."""
    each = {f: verify_output(out.child(f)) for f in folders}
    total = {k: sum(r[k] for r in each.values()) for k in ("pieces", "bytes", "shards")}
    return {**total, "config_hash": next(iter(each.values()))["config_hash"], "checkpoints": each}


def _check_index(out: Location, rows: list[dict[str, Any]]) -> None:
    index = json.loads(out.fs.cat_file(out.child(INDEX_FILE).path))
    want_map = {r["name"]: r["shard"] for r in rows}
    got_map = index.get("weight_map", {})
    if got_map != want_map:
        bad = sorted(set(got_map.items()) ^ set(want_map.items()))[:5]
        raise VerifyError(f"{out.url}/{INDEX_FILE}: weight_map differs from the manifest: {bad}")


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
