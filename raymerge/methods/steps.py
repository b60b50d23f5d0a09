"""Stepping through a block in cache-sized steps with reused buffers (task-vector kernels).

On CPU, the kernel and the histogram rounds of :mod:`raymerge.methods.task_arithmetic` go
through their input in steps, with a few reused step-sized buffers: few enough bytes to stay in
cache, enough elements per torch call to keep the per-call overhead small (tuned on one thread:
``benchmarks/kernels_cpu.py``). Other devices take larger steps. Elementwise results do not
depend on the step.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from raymerge._lazy import torch

KERNEL_STEP_BYTES = 8 << 20  # all of the kernel's step buffers together
HIST_STEP = 1 << 19  # elements per step of the histogram rounds (also amortizes a histogram)
DEVICE_STEP = 1 << 22  # elements per step off the CPU


def step_ranges(n: int, device: torch.device, step: int) -> list[tuple[int, int]]:
    step = step if device.type == "cpu" else max(step, DEVICE_STEP)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


THREAD = threading.local()


def scratch(name: str, rows: int, size: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A (rows, size) scratch tensor kept per thread and reused by the next call: a fresh
    allocation of a few MB costs page faults on first touch, block after block."""
    bufs = THREAD.__dict__.setdefault("bufs", {})
    key = (name, dtype, torch.device(device))
    t = bufs.get(key)
    if t is None or t.numel() < rows * size:
        t = bufs[key] = torch.empty(rows * size, dtype=dtype, device=device)
    return t[: rows * size].view(rows, size)


class Steps:
    """Step-sized views of a block's flat inputs in the math dtype (converted into reused
    buffers where the storage dtype differs) and of scratch buffers.

    The stat rounds and the kernel take their inputs in the storage dtype (``inputs="raw"``,
    see :class:`raymerge.methods.base.Kernel`) so that the conversion happens here, a step at
    a time, while the step is in cache."""

    def __init__(self, base, tensors, math_dtype, step: int, deltas: int, scratch: int = 0):
        self.md = math_dtype or base.dtype
        self.b = base.reshape(-1)
        self.xs = [x.reshape(-1) for x in tensors]
        self.n = self.b.numel()
        self.device = self.b.device
        self.steps = step_ranges(self.n, self.device, step)
        self.size = max((e - s for s, e in self.steps), default=0)
        self.bbuf = None if self.b.dtype == self.md else self.scratch_of("b", 1, self.md)[0]
        self.d = self.scratch_of("d", deltas, self.md)
        self.scratch = self.scratch_of("s", scratch, self.md)

    def scratch_of(self, name: str, rows: int, dtype: torch.dtype) -> torch.Tensor:
        return scratch(name, rows, self.size, dtype, self.device)

    def base(self, s: int, e: int) -> torch.Tensor:
        if self.bbuf is None:
            return self.b[s:e]
        return self.bbuf[: e - s].copy_(self.b[s:e])

    def delta(self, i: int, s: int, e: int, bs: torch.Tensor, slot: int | None = None):
        """x_i - base in the math dtype (``bs``: ``self.base(s, e)``), as ``torch.sub`` gives,
        in delta buffer ``slot`` (default ``i``)."""
        x = self.xs[i][s:e]
        d = self.d[i if slot is None else slot, : e - s]
        if x.dtype == self.md:
            return torch.sub(x, bs, out=d)
        return d.copy_(x).sub_(bs)  # the conversion is exact; then one rounding, as above


def to_math(t: torch.Tensor, math_dtype) -> torch.Tensor:
    return t if math_dtype is None else t.to(math_dtype)
