"""Per-thread output buffers for jobs: one job's output bytes, reused by the thread's next job."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from raymerge.plan import Job
else:
    from raymerge._lazy import torch

_THREAD = threading.local()
KEEP_OUT_BYTES = 256 << 20  # output buffers up to this size are reused by the thread's next job


def out_buffer(job: Job, header_len: int) -> torch.Tensor:
    """The job's output bytes as an uninitialised uint8 tensor (no zero-fill pass over memory
    every byte of which is about to be written): the header and the pieces tile the range; any
    byte they would not cover is zeroed here, so the output never holds stale memory.

    The buffer is the thread's, reused job after job: fresh memory would cost a page fault and
    the kernel's zero-fill per page, for every output byte of every job."""
    held = getattr(_THREAD, "out", None)
    if held is not None and held.numel() >= job.nbytes:
        buf = held[: job.nbytes]
    else:
        buf = torch.empty(job.nbytes, dtype=torch.uint8)
        _THREAD.out = buf if job.nbytes <= KEEP_OUT_BYTES else None
    covered = [(0, header_len)] if job.part == 1 else []
    covered += [(p.out_start - job.out_start, p.out_end - job.out_start) for p in job.pieces]
    pos = 0
    for lo, hi in sorted(covered):
        if lo > pos:
            buf[pos:lo] = 0
        pos = max(pos, hi)
    if pos < job.nbytes:
        buf[pos:] = 0
    return buf


def out_view(buf: torch.Tensor, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor | None:
    """A flat tensor aliasing buf[lo:hi], if the offset is aligned for ``dtype``."""
    item = torch.empty(0, dtype=dtype).element_size()
    if hi == lo or lo % item:
        return None
    return buf[lo:hi].view(dtype)
