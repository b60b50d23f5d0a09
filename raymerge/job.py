"""The body of one job: range-read its inputs, merge each piece, write its output byte range.

Runs inside a Ray worker but imports no Ray: the executor wraps :func:`run_job` in a task. Every
input is read straight from storage by the worker and every output byte goes straight to the sink,
so the driver only sees the small result dict (checksums, timings). Deterministic: the output
depends only on the job, never on the worker, attempt or timing.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from raymerge.errors import InputError
from raymerge.io.header import DTYPES
from raymerge.io.reader import decode, read_ranges
from raymerge.methods import get_method
from raymerge.plan import Job
from raymerge.storage import Location

REMOTE_RANGE_BYTES = 32 << 20  # split big remote reads into ranged GETs of this size


@dataclass(frozen=True)
class JobContext:
    """What every job of a run shares; shipped to workers once (ray.put)."""

    inputs: tuple[Location, ...]
    method: str
    base_input: int | None
    merged_inputs: tuple[int, ...]
    math_dtype: str  # "F32" or "F64"
    headers: tuple[bytes, ...]  # per output shard
    sink: Any
    allow_nonfinite: bool = False


def checksum(data: bytes | memoryview) -> str:
    """xxHash64 of written bytes, hex; the manifest's checksum."""
    return xxhash.xxh64(data).hexdigest()


def fetch(loc: Location, ranges: list[tuple[str, int, int]]) -> list[bytes | bytearray]:
    """Read (file, start, end) ranges of one input. Local files: one read per range into a fresh
    buffer. Remote: large ranges split into ~32 MiB ranged GETs issued concurrently."""
    if loc.is_local:
        out: list[bytes | bytearray] = []
        for file, start, end in ranges:
            buf = bytearray(end - start)
            with open(loc.child(file).path, "rb") as f:
                f.seek(start)
                got = f.readinto(buf)
            if got != end - start:
                raise OSError(f"{loc.url}/{file}: short read at [{start}, {end}): {got} bytes")
            out.append(buf)
        return out
    paths, starts, ends, owner = [], [], [], []
    for k, (file, start, end) in enumerate(ranges):
        pos = start
        while True:
            stop = min(end, pos + REMOTE_RANGE_BYTES)
            paths.append(loc.child(file).path)
            starts.append(pos)
            ends.append(stop)
            owner.append(k)
            pos = stop
            if pos >= end:
                break
    parts = read_ranges(loc.fs, paths, starts, ends)
    joined: list[list[bytes]] = [[] for _ in ranges]
    for k, part in zip(owner, parts):
        joined[k].append(part)
    return [p[0] if len(p) == 1 else b"".join(p) for p in joined]


def run_job(job: Job, ctx: JobContext, device: str = "cpu", attempt: int = 1) -> dict[str, Any]:
    """Compute and write one job; return its checksums and timings."""
    t0 = time.perf_counter()
    by_input: dict[int, list[tuple[str, int, int]]] = {}
    for p in job.pieces:
        for s in p.sources:
            by_input.setdefault(s.input, []).append((s.file, s.start, s.end))
    raw: dict[int, list[bytes | bytearray]] = {
        i: fetch(ctx.inputs[i], rngs) for i, rngs in by_input.items()
    }
    cursor = dict.fromkeys(raw, 0)
    t_read = time.perf_counter() - t0

    method = get_method(ctx.method)
    math_dtype = DTYPES[ctx.math_dtype][0]
    buf = bytearray(job.nbytes)
    view = memoryview(buf)
    if job.part == 1:
        header = ctx.headers[job.shard]
        view[: len(header)] = header
    checks: list[str] = []
    t1 = time.perf_counter()
    for p in job.pieces:
        tensors: dict[int, torch.Tensor] = {}
        for s in p.sources:
            data = raw[s.input][cursor[s.input]]
            cursor[s.input] += 1
            t = decode(data, s.dtype, p.piece_shape)
            if not ctx.allow_nonfinite and not bool(torch.isfinite(t).all()):
                raise InputError(
                    f"{ctx.inputs[s.input].url}/{s.file}: tensor {p.name!r} holds NaN or Inf "
                    "values; pass --allow-nonfinite to merge anyway"
                )
            tensors[s.input] = t.to(device=device, dtype=math_dtype)
        params = json.loads(p.params)
        base = tensors[ctx.base_input] if ctx.base_input is not None else None
        merged = method.kernel(
            base, [tensors[i] for i in ctx.merged_inputs], params["models"], params["method"]
        )
        out = merged.to(dtype=DTYPES[p.out_dtype][0]).reshape(-1).contiguous().cpu()
        lo = p.out_start - job.out_start
        hi = p.out_end - job.out_start
        if hi > lo:
            view[lo:hi] = out.view(torch.uint8).numpy().data
        checks.append(checksum(view[lo:hi]))
        del tensors, merged, out
    raw.clear()
    t_compute = time.perf_counter() - t1
    t2 = time.perf_counter()
    sink_info = ctx.sink.write(job, view)
    t_write = time.perf_counter() - t2
    return {
        "job": job.id,
        "checksums": checks,
        "header_checksum": checksum(view[: len(ctx.headers[job.shard])]) if job.part == 1 else None,
        "attempt": attempt,
        "read_s": t_read,
        "compute_s": t_compute,
        "write_s": t_write,
        "bytes_read": job.bytes_read,
        "bytes_written": job.nbytes,
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        **sink_info,
    }
