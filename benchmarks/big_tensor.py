"""Big-tensor benchmark: TIES over three Llama-3-70B-sized embeddings (128256 x 8192, bf16).

Each model is one 2.1 GB tensor, written in streamed chunks (no 2 GB buffer) with a real
safetensors header. The merge (base + 2 fine-tunes, density 0.2) must chunk the tensor by rows,
compute the TIES thresholds over the chunks (two histogram rounds as Ray tasks), then merge each
chunk. Reported: wall time, planned peak job memory, and the peak RSS (VmHWM) of every Ray worker.
Target (issue "merge methods"): peak worker RSS <= 2 GiB. mergekit needs ~12 bytes per element
for its argsort (> 12 GB) on this tensor; pass --mergekit to try it anyway.

    python benchmarks/big_tensor.py [--workdir /tmp/raymerge-big] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from raymerge.io.header import build_header

SHAPE = (128256, 8192)
NAME = "model.embed_tokens.weight"
ROWS_PER_CHUNK = 2048


def write_model(folder: Path, seed: int, base_seed: int | None) -> None:
    """One bf16 tensor; a fine-tune is base + 0.01 * noise (regenerated chunk by chunk)."""
    path = folder / "model.safetensors"
    if path.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    header, _ = build_header([(NAME, "BF16", SHAPE)])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        for r in range(0, SHAPE[0], ROWS_PER_CHUNK):
            n = min(ROWS_PER_CHUNK, SHAPE[0] - r)
            g = torch.Generator().manual_seed(
                (base_seed if base_seed is not None else seed) * 100003 + r
            )
            x = torch.randn(n, SHAPE[1], generator=g) * 0.02
            if base_seed is not None:
                g2 = torch.Generator().manual_seed(seed * 100003 + r)
                x += 0.002 * torch.randn(n, SHAPE[1], generator=g2)
            f.write(x.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
    tmp.rename(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/raymerge-big")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: local Ray)")
    ap.add_argument(
        "--mergekit", default=None, help="path to mergekit-yaml to compare (needs >12 GB)"
    )
    args = ap.parse_args()
    work = Path(args.workdir)
    t0 = time.perf_counter()
    write_model(work / "base", 1, None)
    write_model(work / "ft1", 2, 1)
    write_model(work / "ft2", 3, 1)
    size_gb = 2 * SHAPE[0] * SHAPE[1] / 1e9
    print(f"models ready in {time.perf_counter() - t0:.0f} s (3 x {size_gb:.2f} GB)")
    cfg = {
        "merge_method": "ties",
        "base_model": str(work / "base"),
        "models": [
            {"model": str(work / m), "parameters": {"weight": 0.5, "density": 0.2}}
            for m in ("ft1", "ft2")
        ],
        "dtype": "bfloat16",
    }
    cfg_path = work / "ties.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    plan = json.loads(
        subprocess.run(
            [sys.executable, "-m", "raymerge", "plan", str(cfg_path), "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    cmd = [
        sys.executable,
        "-m",
        "raymerge",
        "run",
        str(cfg_path),
        str(work / "out"),
        "--overwrite",
        "--no-progress",
        "--json",
    ]
    if args.address:
        cmd += ["--address", args.address]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stderr[-3000:])
        return 1
    s = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    report = {
        "wall_s": wall,
        "merge_s": s["merge_s"],
        "pieces": s["pieces"],
        "jobs": s["jobs"],
        "planned_peak_job_memory_gib": plan["peak_job_memory_bytes"] / 2**30,
        "peak_worker_rss_gib": s["peak_worker_rss"] / 2**30,
        "driver_rss_gib": s["driver_rss"] / 2**30,
        "target_worker_rss_ok": s["peak_worker_rss"] <= 2 * 2**30,
    }
    if args.mergekit:
        t0 = time.perf_counter()
        mk = subprocess.run([args.mergekit, str(cfg_path), str(work / "out-mergekit"), "--quiet"])
        report["mergekit_s"] = (
            time.perf_counter() - t0 if mk.returncode == 0 else f"failed ({mk.returncode})"
        )
    print(
        f"TIES over 3 x {SHAPE[0]}x{SHAPE[1]} bf16: {wall:.1f} s wall, {s['pieces']} chunks, "
        f"planned peak job memory {report['planned_peak_job_memory_gib']:.2f} GiB, "
        f"peak worker RSS {report['peak_worker_rss_gib']:.2f} GiB"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
