"""Helpers shared by the benchmarks (not a benchmark itself).

* model families of a few sizes (``SCALES``), built once with :mod:`raymerge.synth` and cached;
* mergekit-style configs for the methods the benchmarks time;
* a local S3 endpoint (moto's server, in a child process so it does not share the driver's GIL);
* per-job numbers from a run's ``manifest.parquet`` and the time breakdown derived from them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# The 267M Llama-shaped family of throughput.py and ``--scale bench``.
BENCH_MODEL = {
    "hidden": 1024,
    "intermediate": 2816,
    "layers": 16,
    "vocab": 32000,
    "heads": 16,
    "kv_heads": 16,
}

# The 1B family: 3 Llama-shaped models of 1.08B parameters (2.2 GB of bf16 each).
ONE_B_MODEL = {
    "hidden": 2048,
    "intermediate": 5632,
    "layers": 16,
    "vocab": 64000,
    "heads": 16,
    "kv_heads": 16,
}

SCALES: dict[str, dict[str, Any]] = {
    # development: ~4M parameters (8 MB of bf16 per model); small jobs and shards so that even an
    # S3 output (parts >= 5 MiB but a shard's last) is split into several jobs
    "small": {
        "model": {
            "hidden": 256,
            "intermediate": 688,
            "layers": 4,
            "vocab": 2048,
            "heads": 8,
            "kv_heads": 4,
        },
        "job_bytes": 256 << 10,
        "shard_size": 1_000_000,
    },
    # calibration runs of cost_model.py: ~34M parameters (67 MB of bf16 per model)
    "medium": {
        "model": {
            "hidden": 512,
            "intermediate": 1376,
            "layers": 8,
            "vocab": 8192,
            "heads": 8,
            "kv_heads": 8,
        },
        "job_bytes": 4 << 20,
        "shard_size": 20_000_000,
    },
    # throughput.py's family with the planner's default job and shard sizes
    "bench": {"model": BENCH_MODEL, "job_bytes": None, "shard_size": None},
    "1b": {"model": ONE_B_MODEL, "job_bytes": None, "shard_size": None},
}

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB"


# --------------------------------------------------------------------------- inputs


BUILD = """
import json, sys, torch
from raymerge.synth import llama_config, make_family
cfg = llama_config(**json.loads(sys.argv[2]))
make_family(sys.argv[1], 2, cfg=cfg, n_shards=2, dtype=torch.bfloat16)
"""


def build_family(root: Path, model: dict[str, Any]) -> dict[str, Path]:
    """Base + 2 fine-tunes (2 shards each) in ``root``, reused while the recorded config matches.
    Built in a child process, so the benchmark process stays small (no torch) and its RSS
    numbers are not skewed."""
    names = ("base", "ft1", "ft2")
    marker = root / "family.json"
    if marker.exists() and json.loads(marker.read_text()) == model:
        print(f"family: cached in {root}")
        return {n: root / n for n in names}
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"family: building 3 models in {root} (once) ...", flush=True)
    subprocess.run([sys.executable, "-c", BUILD, str(root), json.dumps(model)], check=True)
    marker.write_text(json.dumps(model))
    os.sync()  # flush the new files now, not during the timed runs
    print(f"family: built in {time.perf_counter() - t0:.1f} s", flush=True)
    return {n: root / n for n in names}


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def merge_config(
    method: str,
    refs: dict[str, str],
    density: float = 0.2,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config a benchmark merges: ``linear`` = 0.5/0.5 of the two fine-tunes (the base is not
    read); the task-vector methods = base + both fine-tunes at weight 0.5 (``ties`` and
    ``dare_ties`` with ``density``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    per: dict[str, Any] = {"weight": 0.5}
    if method in ("ties", "dare_ties"):
        per["density"] = density
    cfg: dict[str, Any] = {
        "merge_method": method,
        "models": [{"model": refs[n], "parameters": dict(per)} for n in ("ft1", "ft2")],
        "dtype": "bfloat16",
    }
    if method != "linear":
        cfg["base_model"] = refs["base"]
    if storage_options:
        cfg["storage_options"] = storage_options
    return cfg


# --------------------------------------------------------------------------- local S3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """moto's S3 server (``moto_server``) on 127.0.0.1 in a child process; fake credentials.

    Holds every object in the child's memory: the inputs plus one output per run."""

    KEY = "AKIABENCHFAKEKEY0001"
    SECRET = "bench-fake-secret"

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "key": self.KEY, "secret": self.SECRET}

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"s3://": self.options}

    def __enter__(self) -> LocalS3:
        exe = Path(sys.executable).parent / "moto_server"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(
            [*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def fs(self) -> Any:
        from raymerge.storage import resolve

        return resolve("s3://bench", self.storage_options).fs

    def upload(self, bucket: str, models: dict[str, Path]) -> dict[str, str]:
        fs = self.fs()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        refs = {}
        for name, folder in models.items():
            fs.put(str(folder), f"{bucket}/models/{name}", recursive=True)
            refs[name] = f"s3://{bucket}/models/{name}"
        return refs


def clear_output(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove an earlier run's output, so every timed run starts from an empty folder."""
    from raymerge.storage import resolve

    loc = resolve(url, storage_options)
    if loc.fs.exists(loc.path):
        loc.fs.rm(loc.path, recursive=True)
    if hasattr(loc.fs, "invalidate_cache"):
        loc.fs.invalidate_cache()


# --------------------------------------------------------------------------- manifest


def manifest_jobs(out_url: str, storage_options: dict[str, Any] | None = None) -> list[dict]:
    """One dict per job from ``manifest.parquet`` (rows are per piece; a job's timings repeat on
    each of its rows): node, read_s, compute_s, write_s, bytes read (its source ranges) and
    bytes written (its pieces' output ranges; a shard's header is not counted)."""
    from raymerge.manifest import read_manifest
    from raymerge.storage import resolve

    table, _ = read_manifest(resolve(out_url, storage_options))
    return jobs_from_table(table)


def jobs_from_table(table: Any) -> list[dict]:
    jobs: dict[int, dict[str, Any]] = {}
    for row in table.select(
        [
            "job",
            "node",
            "read_s",
            "compute_s",
            "write_s",
            "out_start",
            "out_end",
            "sources",
            "method",
        ]
    ).to_pylist():
        j = jobs.get(row["job"])
        if j is None:
            j = jobs[row["job"]] = {
                "job": row["job"],
                "node": row["node"],
                "method": row["method"],
                "read_s": row["read_s"],
                "compute_s": row["compute_s"],
                "write_s": row["write_s"],
                "bytes_read": 0,
                "bytes_written": 0,
            }
        j["bytes_read"] += sum(s["end"] - s["start"] for s in row["sources"])
        j["bytes_written"] += row["out_end"] - row["out_start"]
    return [jobs[k] for k in sorted(jobs)]


def breakdown(jobs: list[dict], merge_s: float, workers: int) -> dict[str, Any]:
    """Where a run's time went, from its per-job timings.

    ``sched_overhead_s`` = merge_s * workers - sum over jobs of (read + compute + write): worker
    time not spent inside a job (task dispatch, worker idle while the driver submits or waits,
    the statistics phase, a tail where fewer jobs than workers are left)."""
    out: dict[str, Any] = {"jobs": len(jobs)}
    busy = 0.0
    for k in ("read_s", "compute_s", "write_s"):
        total = sum(j[k] for j in jobs)
        busy += total
        out[f"{k}_sum"] = total
        out[f"{k}_mean"] = total / len(jobs) if jobs else 0.0
    out["busy_s_sum"] = busy
    out["sched_overhead_s"] = merge_s * workers - busy
    out["sched_overhead_frac"] = out["sched_overhead_s"] / (merge_s * workers) if merge_s else 0.0
    out["bytes_read"] = sum(j["bytes_read"] for j in jobs)
    out["bytes_written"] = sum(j["bytes_written"] for j in jobs)
    names: dict[str, str] = {}
    per_node = Counter()
    for j in jobs:
        label = names.setdefault(j["node"], f"node{len(names)}")
        per_node[label] += 1
    out["jobs_per_node"] = dict(per_node)
    out["node_ids"] = {v: k[:12] for k, v in names.items()}
    return out
