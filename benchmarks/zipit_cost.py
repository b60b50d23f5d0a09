"""Predicted wall time of zipping two Llama-3-70B-shaped models on N GPU nodes (a model, printed
with its assumptions; ``python benchmarks/cost_model.py --zipit`` runs it).

The figures come from raymerge's own planner and budget (``raymerge.zipit.budget``) over
fabricated 70B headers (no data), plus throughput assumptions given as flags:

- **statistics**: ``actors = N x --actors-per-node`` streaming actors (one calibration shard
  each, one GPU each). Per layer an actor reads layer l of both models from storage (its node's
  bandwidth is shared by its actors), runs its shard's tokens through both (2 x params x tokens
  flops, at ``--gpu-fp32-tflops``) and accumulates the outer products of the layer's spaces in
  float64 (tokens x C^2 x 2 flops per space, the residual twice per layer, at
  ``--gpu-fp64-tflops``). A layer takes max(read, compute); the stack is 80 layers + the
  embedding.
- **matching**: one task per space on half a GPU, as many at once as GPUs x 2 and node memory
  (each needs the planned bytes of host memory: statistics, correlation, float32 copies) allow.
  A task = the correlation on the CPU (``--corr-gbps`` of float64 [C, C] passes, 4 passes) +
  the greedy matcher's C/2 merge steps at ``--gpu-step-ms`` each (a GPU matcher was not measured
  here: the step time is an assumption; ``--cpu`` uses the CPU constant measured by
  benchmarks/zipit_match_time.py instead). Matching overlaps the statistics (each space is
  matched as soon as it is reduced), so it costs max(0, matching - statistics) + the last
  layer's matching.
- **apply**: the per-tensor jobs read both models and write one (storage-bound at these sizes:
  index_add is cheap), spread evenly over the nodes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def budget_70b(samples: int, tokens: int, shards: int) -> tuple[Any, Any, int]:
    """raymerge's figures for a 70B zip over fabricated headers: (budget, layout, model bytes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from raymerge.io.reader import read_model
    from raymerge.storage import resolve
    from raymerge.zipit.budget import calibration_of, zip_budget
    from raymerge.zipit.gather import shard_ranges
    from raymerge.zipit.spaces import describe
    from tests.fabricate import fabricate_checkpoint, llama3_70b_config

    tmp = Path(tempfile.mkdtemp(prefix="raymerge-zip70b-"))
    try:
        cfg = llama3_70b_config()
        size = fabricate_checkpoint(str(tmp / "a"), cfg)
        lay = read_model(str(tmp / "a"), resolve(str(tmp / "a")))
        zl = describe({n: t.shape for n, t in lay.tensors.items()}, cfg, 2)
        cal = calibration_of(samples, tokens, shard_ranges(samples, 1, shards), 1)
        return zip_budget(zl, lay.tensors, cfg, 2, cal, "zipit"), zl, size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def predict(args: argparse.Namespace, nodes: int, budget: Any, zl: Any, size: int) -> dict:
    """The three phases' seconds on ``nodes`` nodes (see the module docstring)."""
    d, inter, kv, layers, k = 8192, 28672, 8 * 128, 80, 2
    params_layer = 2 * d * d + 2 * kv * d + 3 * d * inter  # q, o; k, v; gate, up, down
    actors = nodes * args.actors_per_node
    tokens = args.samples * args.tokens / actors
    read = k * params_layer * 2 / (args.node_gbps * 1e9 / args.actors_per_node)
    fwd = 2 * k * params_layer * tokens / (args.gpu_fp32_tflops * 1e12)
    cs = {
        s.name.split(".")[0]: s.width for s in budget.spaces if s.name in ("res", "attn.0", "mlp.0")
    }
    outer = tokens * 2 * (cs["mlp"] ** 2 + cs["attn"] ** 2 + 2 * cs["res"] ** 2)
    layer_s = max(read, fwd + outer / (args.gpu_fp64_tflops * 1e12))
    stats_s = (layers + 1) * layer_s
    # matching
    slots_mem = int(args.node_memory_gb * 1e9 // max(s.bytes for s in budget.spaces))
    slots = nodes * min(2 * args.gpus_per_node, max(1, slots_mem))
    from raymerge.zipit.budget import ZIPIT_TIME

    def match_s(space) -> float:
        corr = 4 * 8 * space.width**2 / (args.corr_gbps * 1e9)
        if args.cpu:
            a, p = ZIPIT_TIME
            return corr + a * space.units**p
        return corr + space.units / 2 * args.gpu_step_ms / 1e3

    total = sum(match_s(s) for s in budget.spaces)
    last = max(match_s(s) for s in budget.spaces)
    match_wall = total / slots
    tail = max(0.0, match_wall - stats_s) + last
    apply_s = max(2 * size / (nodes * args.node_gbps * 1e9), size / (nodes * args.node_gbps * 1e9))
    wall = args.startup_s + stats_s + tail + apply_s
    return {
        "nodes": nodes,
        "actors": actors,
        "layer_s": layer_s,
        "layer_read_s": read,
        "layer_compute_s": fwd + outer / (args.gpu_fp64_tflops * 1e12),
        "stats_s": stats_s,
        "match_slots": slots,
        "match_total_s": total,
        "match_tail_s": tail,
        "apply_s": apply_s,
        "wall_s": wall,
        "wall_h": wall / 3600,
    }


def add_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--zip-nodes", default="1,2,4,8,16", help="GPU node counts to predict")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--actors-per-node", type=int, default=4, help="statistics actors per node")
    ap.add_argument("--samples", type=int, default=512, help="calibration sequences")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per sequence")
    ap.add_argument("--gpu-fp64-tflops", type=float, default=40.0, help="achieved FP64 GEMM")
    ap.add_argument("--gpu-fp32-tflops", type=float, default=40.0, help="achieved FP32/TF32")
    ap.add_argument("--gpu-step-ms", type=float, default=0.5, help="one greedy merge step, ms")
    ap.add_argument("--corr-gbps", type=float, default=5.0, help="CPU float64 correlation pass")
    ap.add_argument("--node-memory-gb", type=float, default=1800.0, help="host memory per node")
    ap.add_argument("--zip-node-gbps", dest="node_gbps", type=float, default=1.25)
    ap.add_argument("--zip-startup-s", dest="startup_s", type=float, default=60.0)
    ap.add_argument("--cpu", action="store_true", help="match on CPUs (measured constant)")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """Predict and print (``add_flags``' options in ``args``); returns every number."""
    shards = max(int(n) for n in args.zip_nodes.split(",")) * args.actors_per_node
    budget, zl, size = budget_70b(args.samples, args.tokens, shards)
    assumptions = [
        f"two Llama-3-70B-shaped models ({size / 1e9:.0f} GB of bf16 each), K = 2, zipit matcher",
        f"calibration {args.samples} x {args.tokens} tokens, one shard per actor, "
        f"{args.actors_per_node} actors per node (one GPU each)",
        f"each node reads storage at {args.node_gbps} GB/s, shared by its actors; each actor "
        f"reads both models once ({budget.read_bytes / 1e9:.0f} GB)",
        f"GPU: {args.gpu_fp64_tflops} TFLOP/s FP64 (outer products), {args.gpu_fp32_tflops} "
        "TFLOP/s FP32 (forward)",
        (
            "matching on CPUs with the measured single-thread constant"
            if args.cpu
            else f"GPU matcher: {args.gpu_step_ms} ms per greedy merge step (ASSUMED: a GPU "
            "matcher was not measured here)"
        ),
        f"correlation on the CPU at {args.corr_gbps} GB/s per float64 pass (4 passes); "
        f"{args.node_memory_gb:.0f} GB host memory per node bounds concurrent matchers",
        f"apply: storage-bound, reads 2 x {size / 1e9:.0f} GB, writes {size / 1e9:.0f} GB, "
        f"spread over the nodes; start-up {args.startup_s:.0f} s",
        "statistics, matching tail and apply are sequential; matching overlaps the statistics",
    ]
    print("70B zip, assumptions:\n  " + "\n  ".join(assumptions))
    big = max(budget.spaces, key=lambda s: s.bytes)
    print(
        f"planned: statistics actor {budget.actor_bytes / 1e9:.1f} GB; largest matcher "
        f"{big.name} (C={big.width}) {big.bytes / 1e9:.1f} GB host memory; {len(budget.spaces)} "
        "spaces"
    )
    rows = [predict(args, int(n), budget, zl, size) for n in args.zip_nodes.split(",")]
    print(
        f"{'nodes':>5} {'actors':>6} {'s/layer':>8} {'stats h':>8} {'match tail h':>12} "
        f"{'apply h':>8} {'wall h':>7}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['actors']:>6} {r['layer_s']:>8.1f} {r['stats_s'] / 3600:>8.2f} "
            f"{r['match_tail_s'] / 3600:>12.2f} {r['apply_s'] / 3600:>8.2f} {r['wall_h']:>7.2f}"
        )
    out = {"assumptions": assumptions, "budget": budget.as_json(), "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
