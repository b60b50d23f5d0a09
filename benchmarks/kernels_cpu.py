"""Single-threaded CPU microbenchmark of the task-vector kernels (``merge_piece`` end to end).

Times one whole-tensor merge of bf16 inputs (base + N fine-tunes) in float32 math, statistics
rounds included, the way a Ray worker runs it (``torch.set_num_threads(1)``), writing into a bf16
output buffer. Repeats each case and reports the minimum (the machine may be shared).

    python benchmarks/kernels_cpu.py [--elements 33554432] [--models 2] [--repeat 3]
        [--methods ties,task_arithmetic] [--threads 1]

To compare with another version of the package, run the same command with
``PYTHONPATH=/path/to/other/checkout`` (on the same machine, in the same session).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from raymerge.methods import PieceInfo, get_method, merge_piece

PARAMS = {
    "task_arithmetic": ({"weight": 0.5}, {"normalize": False, "lambda": 1.0}),
    "ties": ({"weight": 0.5, "density": 0.2}, {"normalize": True, "lambda": 1.0}),
    "breadcrumbs_ties": (
        {"weight": 0.5, "density": 0.2, "gamma": 0.01},
        {"normalize": False, "lambda": 1.0},
    ),
    "dare_ties": (
        {"weight": 0.5, "density": 0.2},
        {"normalize": False, "lambda": 1.0, "rescale": True},
    ),
    "della": (
        {"weight": 0.5, "density": 0.2, "epsilon": 0.1},
        {"normalize": True, "lambda": 1.0, "rescale": True},
    ),
}


def inputs(n: int, models: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    rows = 4096
    shape = (n // rows, rows) if n % rows == 0 else (n,)
    base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    fts = [
        (base.float() + torch.randn(shape, generator=g) * 0.002).to(torch.bfloat16)
        for _ in range(models)
    ]
    return base, fts


def time_method(name: str, base, fts, repeat: int) -> float:
    method = get_method(name)
    mp, params = PARAMS[name]
    model_params = [dict(mp) for _ in fts]
    info = PieceInfo.whole("t", tuple(base.shape))
    out = torch.empty(base.shape, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        merge_piece(method, info, base, fts, model_params, params, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=1 << 25)
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", default="ties,task_arithmetic")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base, fts = inputs(a.elements, a.models)
    rows = {}
    for name in a.methods.split(","):
        s = time_method(name, base, fts, a.repeat)
        rows[name] = {
            "s": round(s, 4),
            "ns_per_elem_model": round(s / a.elements / a.models * 1e9, 3),
        }
        print(name, rows[name], flush=True)
    print(json.dumps({"elements": a.elements, "models": a.models, "threads": a.threads, **rows}))


if __name__ == "__main__":
    main()
