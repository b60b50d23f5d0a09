"""``manifest.parquet``: one row per output tensor or chunk.

The manifest is the run's ledger: where every output byte range came from (source byte ranges per
input model), where it went (shard + offsets), its xxHash64 checksum, the method and resolved
parameters, and how it was produced (status, attempt, node, timings). ``raymerge verify`` checks
outputs against it; resume and nightly jobs read it. Schema metadata carries the raymerge version,
config hash, run id, the (redacted) config and the run summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raymerge.plan import Plan
from raymerge.redaction import redact
from raymerge.results import JobResult
from raymerge.storage import Location

MANIFEST = "manifest.parquet"
CHECKSUM_ALGO = "xxh64"

SOURCE = pa.struct(
    [
        ("model", pa.string()),
        ("tensor", pa.string()),
        ("file", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("dtype", pa.string()),
    ]
)
SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("chunk", pa.int32()),
        ("n_chunks", pa.int32()),
        ("dtype", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("elem_start", pa.int64()),
        ("elem_end", pa.int64()),
        ("shard", pa.string()),
        ("out_start", pa.int64()),
        ("out_end", pa.int64()),
        ("checksum", pa.string()),
        ("method", pa.string()),
        ("params", pa.string()),
        ("sources", pa.list_(SOURCE)),
        ("status", pa.string()),
        ("job", pa.int32()),
        ("attempt", pa.int32()),
        ("node", pa.string()),
        ("pid", pa.int64()),
        # per job, on the job's first row (null on its other rows, so sums over rows are sums
        # over jobs): wall = from the job's start to its last byte written; read, compute and
        # write are its parts (local inputs are mapped: their page-ins count as compute)
        ("wall_s", pa.float64()),
        ("read_s", pa.float64()),
        ("compute_s", pa.float64()),
        ("write_s", pa.float64()),
    ]
)


def build_table(plan: Plan, results: Mapping[int, JobResult], metadata: dict[str, Any]) -> pa.Table:
    cols: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}
    refs = [redact(r) for r in plan.inputs]
    for job in plan.jobs:
        res = results[job.id]
        for p, check in zip(job.pieces, res.checksums):
            row = {
                "name": p.name,
                "chunk": p.chunk,
                "n_chunks": p.n_chunks,
                "dtype": p.out_dtype,
                "shape": list(p.shape),
                "elem_start": p.elem_start,
                "elem_end": p.elem_end,
                "shard": plan.shards[job.shard].name,
                "out_start": p.out_start,
                "out_end": p.out_end,
                "checksum": check,
                "method": plan.method,
                "params": p.params.as_json(),
                "sources": [
                    {
                        "model": refs[s.input],
                        "tensor": s.tensor,
                        "file": s.file,
                        "start": s.start,
                        "end": s.end,
                        "dtype": s.dtype,
                    }
                    for s in p.sources
                ],
                "status": "reused" if res.reused else "done",
                "job": job.id,
                "attempt": res.attempt,
                "node": res.node,
                "pid": res.pid,
                **_timings(res, first=p is job.pieces[0]),
            }
            for k, v in row.items():
                cols[k].append(v)
    meta = {k.encode(): json.dumps(v, sort_keys=True).encode() for k, v in metadata.items()}
    return pa.table(cols, schema=SCHEMA.with_metadata(meta))


def _timings(res: JobResult, first: bool) -> dict[str, float | None]:
    keys = ("wall_s", "read_s", "compute_s", "write_s")
    return {k: getattr(res, k) if first else None for k in keys}


def write_manifest(out: Location, table: pa.Table) -> bytes:
    """Write ``manifest.parquet``; returns its bytes (``_SUCCESS`` pins their checksum)."""
    from raymerge.io.files import write_small

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    write_small(out, MANIFEST, data)
    return data


def read_manifest(out: Location) -> tuple[pa.Table, dict[str, Any]]:
    return parse_manifest(out.fs.cat_file(out.child(MANIFEST).path))


def parse_manifest(data: bytes) -> tuple[pa.Table, dict[str, Any]]:
    """The table and the schema metadata of manifest bytes; ValueError if they are not a
    raymerge manifest."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a Parquet file ({str(exc)[:200]})") from None
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"not a raymerge manifest (no columns {missing[:5]})")
    try:
        meta = {
            k.decode(): json.loads(v)
            for k, v in (table.schema.metadata or {}).items()
            if not k.startswith(b"ARROW")
        }
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"its metadata is not JSON ({str(exc)[:200]})") from None
    return table, meta
