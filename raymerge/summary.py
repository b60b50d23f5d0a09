"""The run summary: what a run did, as a dict (``--json``, the manifest, ``_SUCCESS``) and as
the table the CLI prints."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from raymerge.plan import Plan
from raymerge.results import JobResult


def fmt_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as progress and summaries show sizes)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _secs(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f} s"


def fmt_size(n: int) -> str:
    """A size as an option takes it: '5GB', '1GiB', '64MiB', '123'."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def run_summary(
    plan: Plan,
    result: Any,
    results: Mapping[int, JobResult],
    wall: float,
    run_id: str,
    driver_rss: int,
) -> dict[str, Any]:
    """The summary of a finished run (``result``: the executor's :class:`ExecResult`)."""
    fresh = result.results.values()
    # from storage, by the jobs and the statistics rounds (chunks kept in memory count once)
    read = sum(r.bytes_read for r in fresh) + result.stats_bytes_read
    written = sum(s.size for s in plan.shards)
    return {
        "run_id": run_id,
        "method": plan.method,
        "tensors": len({p.name for p in plan.pieces}),
        "pieces": len(plan.pieces),
        "jobs": len(plan.jobs),
        "shards": len(plan.shards),
        "bytes_read": read,
        "bytes_written": written,
        "bytes_reused": sum(r.bytes_reused for r in fresh),
        "kept_peak_bytes": result.kept_peak_bytes,
        "merge_s": result.seconds,
        "wall_s": wall,
        "read_gbps": read / result.seconds / 1e9 if result.seconds else 0.0,
        "write_gbps": written / result.seconds / 1e9 if result.seconds else 0.0,
        "peak_job_memory_planned": max((j.memory_bytes for j in plan.jobs), default=0),
        "peak_worker_rss": max((r.rss_peak for r in results.values()), default=0),
        "driver_rss": driver_rss,
        "retries": result.retries,
        "storage_retries": result.stats_storage_retries + sum(r.storage_retries for r in fresh),
        "nodes": len(result.nodes),
        "worker_processes": len({r.pid for r in fresh}),
    }


def process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up included), on Linux."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def print_summary(s: Mapping[str, Any], file: TextIO = sys.stdout) -> None:
    """The summary as an aligned two-column table."""
    rows = [
        ("method", s["method"]),
        ("tensors / jobs / shards", f"{s['tensors']} / {s['jobs']} / {s['shards']}"),
        ("read", fmt_bytes(s["bytes_read"])),
        ("reused from memory", fmt_bytes(s.get("bytes_reused", 0))),
        ("written", fmt_bytes(s["bytes_written"])),
        ("merge time", f"{s['merge_s']:.2f} s"),
        ("wall time (run / process)", f"{s['wall_s']:.2f} s / {_secs(s.get('process_s'))}"),
        ("throughput", f"read {s['read_gbps']:.2f} GB/s, write {s['write_gbps']:.2f} GB/s"),
        ("peak job memory (planned)", fmt_bytes(s["peak_job_memory_planned"])),
        ("peak worker RSS", fmt_bytes(s["peak_worker_rss"])),
        ("retries (jobs / storage requests)", f"{s['retries']} / {s.get('storage_retries', 0)}"),
        ("nodes", s["nodes"]),
    ]
    if "zipit" in s:
        z = s["zipit"]
        rows.append(
            (
                f"{z['matcher']} stage",
                f"{z['spaces']} spaces, {z['samples']} samples on {z['actors']} actors, "
                f"{z['within_model_merges']} within-model merges; statistics "
                f"{z['stats_s']:.2f} s, matching {z['match_s']:.2f} s",
            )
        )
        b = z.get("budget") or {}
        if b.get("actor_bytes"):
            rows.append(
                (
                    f"{z['matcher']} memory",
                    f"statistics actor planned {fmt_bytes(b['actor_bytes'])}, peak RSS "
                    f"{fmt_bytes(z.get('actor_peak_rss', 0))}; largest matcher planned "
                    f"{fmt_bytes(max((v['bytes'] for v in b['spaces'].values()), default=0))}",
                )
            )
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=file)


__all__ = ["fmt_bytes", "fmt_size", "print_summary", "run_summary"]


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM; unlike ru_maxrss it is not
    inherited across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
