"""GPU kernel benchmark: achieved memory bandwidth of raymerge's merge kernels on one device.

Why: a merge kernel does a few flops per byte, so on a GPU it is memory-bound; the number that
says whether a kernel is good is its achieved bandwidth against the device's. And since a job
reads its inputs from storage into host memory before the GPU sees them, the host->device copy
(pinned vs pageable host buffers) is measured too: it bounds a GPU job as much as the kernel.

What it measures, on ``--numel`` elements (default 1e9, rounded down to whole rows of ``--row``
elements; a ``(numel / row, row)`` tensor like a 70B weight matrix):

* **kernels** (``--methods``: linear, task_arithmetic, ties, dare_ties, slerp) through
  ``raymerge.methods.merge_piece`` on device tensors: bf16 inputs (2 fine-tunes, plus the base
  where the method needs one; slerp: base + 1), float32 math, written into a bf16 output, whole
  tensor (statistics rounds included, as for an unchunked tensor). ``--warmup`` untimed calls,
  then ``--repeats`` timed with CUDA events; the minimum is reported (median too). Achieved
  bandwidth = (bytes of the inputs + bytes of the output) / time: the least traffic the merge
  needs (statistics rounds that read the inputs again are not credited), as GB/s and as percent
  of the device's peak and of the measured copy bandwidth. ``--block-elements`` sweeps
  ``raymerge.methods.BLOCK_ELEMENTS`` (0 = the library's value), since a kernel runs block by
  block and every block costs kernel launches.
* **copy**: ``torch.empty_like(x).copy_(x)`` of the bf16 input (read + write), the practical
  peak.
* **peak**: ``--peak-gbps``, else a table by ``torch.cuda.get_device_name()`` (H200 4800, H100
  3350, A100 2039 GB/s: SXM parts; pass ``--peak-gbps`` for PCIe ones).
* **transfers** of ``--transfer-mib`` bytes: host->device and device->host with a pinned and
  with a pageable host buffer (``copy_(non_blocking=True)``, CUDA events, best of repeats).

Memory: inputs, output and the copy take ~12 bytes per element (~12 GB at 1e9) plus the kernels'
scratch; numel is reduced (with a warning) when that exceeds min(``--max-gib``, 90% of the
free device memory).

Without CUDA it prints a message and ``{"skipped": "no CUDA"}`` and exits 0. A hidden debug
flag ``--device cpu`` (with a small ``--numel``) runs everything but the transfers on the CPU,
timed with ``time.perf_counter``.

The last line printed is one JSON object holding every number.

Usage::

    python benchmarks/gpu_kernels.py [--numel 1000000000] [--methods linear,ties,...]
        [--repeats 5] [--warmup 1] [--peak-gbps G] [--block-elements 0,16777216]
        [--transfer-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")
PEAK_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}  # by device-name substring
BYTES_PER_ELEMENT = 12  # base + 2 models + output (bf16), copy target (bf16), generation temp
GiB = 1 << 30


def timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Seconds one call of ``fn`` takes on ``device`` (CUDA events; perf_counter on CPU)."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], Any]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cpu_time


def bench(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    clock = timer(device)
    for _ in range(warmup):
        clock(fn)
    times = [clock(fn) for _ in range(repeats)]
    return {"min_s": min(times), "median_s": statistics.median(times), "times_s": times}


def peak_for(device: torch.device, flag: float | None) -> tuple[float | None, str]:
    if flag:
        return flag, "--peak-gbps"
    if device.type != "cuda":
        return None, "none (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, gbps in PEAK_GBPS.items():
        if key in name:
            return gbps, f"table ({key})"
    return None, f"unknown device {name!r}: pass --peak-gbps"


def fit_numel(numel: int, row: int, device: torch.device, max_gib: float) -> tuple[int, str]:
    """``numel`` rounded down to whole rows, reduced to what the memory budget holds."""
    note = ""
    budget = max_gib * GiB
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = min(budget, 0.9 * free)
    if numel * BYTES_PER_ELEMENT > budget:
        fitted = int(budget // BYTES_PER_ELEMENT)
        note = (
            f"warning: {numel} elements need ~{numel * BYTES_PER_ELEMENT / GiB:.1f} GiB, over "
            f"the budget of {budget / GiB:.1f} GiB; using {fitted // row * row}"
        )
        numel = fitted
    return max(row, numel // row * row), note


def make_inputs(
    numel: int, row: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A bf16 base (std 0.02) and two fine-tunes = base + noise (std 0.002), on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (numel // row, row)
    base = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16).mul_(0.02)
    fts = []
    for _ in range(2):
        noise = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16).mul_(0.002)
        fts.append(noise.add_(base))
    return base, fts


def resolved_params(name: str, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fully resolved parameters as the planner would pass them: defaults, weight 0.5 each,
    density 0.2 (ties, dare_ties), t 0.5 (slerp)."""
    from raymerge.methods import get_method

    m = get_method(name)
    wide = {p.name: p.default for p in m.params if p.scope == "global"}
    per = [{p.name: p.default for p in m.params if p.scope == "model"} for _ in range(n)]
    for d in per:
        if "weight" in d:
            d["weight"] = 0.5
        if name in ("ties", "dare_ties"):
            d["density"] = 0.2
    if "t" in wide:
        wide["t"] = 0.5
    return wide, per


def kernel_case(
    name: str, base: torch.Tensor, fts: list[torch.Tensor], out: torch.Tensor
) -> tuple[Callable[[], Any], int]:
    """The call to time and the bytes it must move (inputs read + output written)."""
    from raymerge.methods import PieceInfo, get_method, merge_piece

    m = get_method(name)
    lo, hi = m.inputs
    n = 2 if hi is None or hi >= 2 else hi
    xs = fts[:n]
    b = base if m.base == "required" else None
    wide, per = resolved_params(name, n)
    info = PieceInfo.whole("model.layers.0.mlp.up_proj.weight", tuple(base.shape), seed=1)
    inputs = [*xs, *([b] if b is not None else [])]
    nbytes = sum(x.numel() * x.element_size() for x in inputs) + out.numel() * out.element_size()

    def call() -> None:
        merge_piece(m, info, b, xs, per, wide, None, math_dtype=torch.float32, out=out)

    return call, nbytes


def set_block_elements(value: int) -> int:
    """Set ``raymerge.methods.BLOCK_ELEMENTS`` (0: leave it); returns the value in effect."""
    import raymerge.methods as rm

    if value:
        rm.BLOCK_ELEMENTS = value
    return int(getattr(rm, "BLOCK_ELEMENTS", 0))


def transfers(nbytes: int, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Host<->device copies with pinned and pageable host buffers (GB/s, best of repeats)."""
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    out: dict[str, Any] = {"bytes": nbytes}
    hosts = {
        "pinned": torch.empty(nbytes, dtype=torch.uint8, pin_memory=True),
        "pageable": torch.empty(nbytes, dtype=torch.uint8),
    }
    for kind, host in hosts.items():
        host.fill_(1)  # touch every page before timing
        h2d = bench(lambda h=host, d=dev: d.copy_(h, non_blocking=True), device, warmup, repeats)
        d2h = bench(lambda h=host, d=dev: h.copy_(d, non_blocking=True), device, warmup, repeats)
        out[f"h2d_{kind}_gbps"] = nbytes / h2d["min_s"] / 1e9
        out[f"d2h_{kind}_gbps"] = nbytes / d2h["min_s"] / 1e9
    del hosts, dev
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1_000_000_000, help="elements per tensor")
    ap.add_argument("--row", type=int, default=8192, help="elements per row (tensor shape)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of kernels")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per case (min reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    ap.add_argument("--peak-gbps", type=float, default=None, help="device memory peak, GB/s")
    ap.add_argument(
        "--block-elements",
        default="0,16777216",
        help="comma list of raymerge.methods.BLOCK_ELEMENTS to sweep (0: the library's)",
    )
    ap.add_argument("--transfer-mib", type=int, default=1024, help="host<->device copy size")
    ap.add_argument("--max-gib", type=float, default=60.0, help="device memory budget")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # debug: cpu
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown method(s) {', '.join(sorted(unknown))}; valid: {', '.join(METHODS)}")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_kernels: no CUDA device (torch.cuda.is_available() is false); skipped")
        print(json.dumps({"skipped": "no CUDA"}))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_src = peak_for(device, args.peak_gbps)
    numel, note = fit_numel(args.numel, args.row, device, args.max_gib)
    if note:
        print(note)
    print(f"device: {name}; peak {peak} GB/s ({peak_src}); {numel} elements per tensor")

    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "numel": numel,
        "numel_requested": args.numel,
        "row": args.row,
        "peak_gbps": peak,
        "peak_source": peak_src,
        "repeats": args.repeats,
    }
    base, fts = make_inputs(numel, args.row, device)
    copy = bench(lambda x=base: torch.empty_like(x).copy_(x), device, args.warmup, args.repeats)
    copy_bytes = 2 * base.numel() * base.element_size()
    copy_gbps = copy_bytes / copy["min_s"] / 1e9
    report["copy"] = {**copy, "bytes": copy_bytes, "gbps": copy_gbps}
    if peak:
        report["copy"]["pct_of_peak"] = 100 * copy_gbps / peak
    print(
        f"copy: {copy_gbps:.1f} GB/s"
        + (f" ({100 * copy_gbps / peak:.0f}% of peak)" if peak else "")
    )

    out = torch.empty_like(base)
    kernels: dict[str, dict[str, Any]] = {}
    original = set_block_elements(0)
    try:
        for block in [int(b) for b in args.block_elements.split(",")]:
            in_effect = set_block_elements(block or original)
            for m in methods:
                call, nbytes = kernel_case(m, base, fts, out)
                r = bench(call, device, args.warmup, args.repeats)
                gbps = nbytes / r["min_s"] / 1e9
                r.update(bytes=nbytes, gbps=gbps, pct_of_copy=100 * gbps / copy_gbps)
                if peak:
                    r["pct_of_peak"] = 100 * gbps / peak
                kernels.setdefault(str(in_effect), {})[m] = r
                pk = f", {r['pct_of_peak']:.0f}% of peak" if peak else ""
                print(
                    f"block {in_effect:>9}  {m:<16} {r['min_s'] * 1e3:9.2f} ms  "
                    f"{gbps:8.1f} GB/s  ({r['pct_of_copy']:.0f}% of copy{pk})",
                    flush=True,
                )
    finally:
        set_block_elements(original)
    report["kernels"] = kernels
    del base, fts, out

    if device.type == "cuda":
        nbytes = args.transfer_mib << 20
        report["transfers"] = transfers(nbytes, device, args.warmup, args.repeats)
        t = report["transfers"]
        print(
            f"host->device: pinned {t['h2d_pinned_gbps']:.1f} GB/s, pageable "
            f"{t['h2d_pageable_gbps']:.1f} GB/s; device->host: pinned {t['d2h_pinned_gbps']:.1f}"
            f" GB/s, pageable {t['d2h_pageable_gbps']:.1f} GB/s"
        )
    else:
        report["transfers"] = {"skipped": "no CUDA device"}
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
