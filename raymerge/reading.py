"""A job's inputs: range reads of its sources, then tensors for the method (no Ray).

:func:`read_pieces` reads every byte range the job's pieces name (scales of quantised tensors and
LoRA adapter ranges included), one batch per input; :func:`piece_inputs` turns a piece's bytes
into the method's inputs: decoded, dequantised, LoRA-updated (:mod:`raymerge.lora`) and, for a
vocabulary tensor, gathered row by row into each model's aligned tensor
(:class:`~raymerge.plan.records.VocabPiece`; padding rows are the mean of the aligned rows,
streamed here block by block in the blocks the plan fixed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from raymerge.worker import JobContext
else:
    from raymerge._lazy import torch

from raymerge.dequant import dequantize
from raymerge.errors import InputError
from raymerge.io.header import DTYPES, itemsize
from raymerge.io.ranges import decode, fetch, recheck_local
from raymerge.lora import apply_lora
from raymerge.methods import BLOCK_ELEMENTS
from raymerge.plan import Piece
from raymerge.plan.lora import lora_ranges
from raymerge.plan.records import Source, VocabPiece, VocabTensor
from raymerge.plan.vocab import rows_of_piece

Cached = Sequence[Sequence[Any] | None]  # per piece: its sources' bytes (None: not held)
Extra = tuple[Any, list[Any] | None]  # a source's scale bytes and LoRA ranges' bytes


def read_sources(
    groups: Sequence[Sequence[Source]], ctx: JobContext, cached: Cached | None = None
) -> tuple[list[list[Any]], list[list[Extra]], int]:
    """Raw bytes of every source of every group (and of the scales and LoRA ranges they
    need), in group and source order; one batch of reads per input.

    ``cached[g][k]``, where given and not None, is source k of group g already in memory (a
    chunk kept from an earlier statistics round) and is not read again (its scales and LoRA
    ranges, small, are).

    Returns:
        Per group its sources' bytes, per group its sources' extras (scale bytes or None,
        LoRA range bytes or None), and the bytes read from storage.
    """
    wanted: dict[int, list[tuple[int, int, int, tuple[str, int, int]]]] = {}
    out: list[list[Any]] = [[None] * len(g) for g in groups]
    scales: list[list[Any]] = [[None] * len(g) for g in groups]
    loras: list[list[Any]] = [[None] * len(g) for g in groups]
    nread = 0

    def want(i: int, g: int, k: int, what: int, r: tuple[str, int, int]) -> None:
        nonlocal nread
        wanted.setdefault(i, []).append((g, k, what, r))
        nread += r[2] - r[1]

    for g, sources in enumerate(groups):
        have = cached[g] if cached else None
        for k, s in enumerate(sources):
            if s.scale is not None:
                want(s.input, g, k, 1, (s.scale.file, s.scale.start, s.scale.end))
            if s.lora is not None:
                loras[g][k] = []
                for r in lora_ranges(s.lora):
                    want(s.lora.target.input, g, k, 2, r)
            if have is not None and have[k] is not None:
                out[g][k] = have[k]
            else:
                want(s.input, g, k, 0, (s.file, s.start, s.end))
    for i, items in wanted.items():
        got = fetch(ctx.inputs[i], [r for *_, r in items], ctx.expect(i), ctx.s3_reader)
        for (g, k, what, _), buf in zip(items, got):
            if what == 2:
                loras[g][k].append(buf)
            else:
                (scales if what else out)[g][k] = buf
    extra = [list(zip(sc, lo)) for sc, lo in zip(scales, loras)]
    return out, extra, nread


def read_pieces(
    pieces: Sequence[Piece], ctx: JobContext, cached: Cached | None = None
) -> tuple[list[list[Any]], list[list[Extra]], int]:
    """:func:`read_sources` of the pieces' sources."""
    return read_sources([p.sources for p in pieces], ctx, cached)


def recheck_inputs(pieces: Sequence[Piece], ctx: JobContext) -> None:
    """The local files these pieces were mapped from are still their planned version (their
    pages were read during the compute, after the checks :func:`fetch` made when mapping)."""
    used: dict[int, set[str]] = {}
    for p in pieces:
        for i, file in p.reads_files:
            if ctx.inputs[i].is_local:
                used.setdefault(i, set()).add(file)
    for i, files in used.items():
        recheck_local(ctx.inputs[i], files, ctx.expect(i))


def finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``. A float32 sum is NaN/Inf whenever an element is, so one cheap
    reduction per block settles the common case (a block-sized float32 temporary, never a
    tensor-sized one); only a non-finite sum (or overflow) gets the exact scan."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    flat = t.reshape(-1)
    for a in range(0, flat.numel(), BLOCK_ELEMENTS):
        blk = flat[a : a + BLOCK_ELEMENTS]
        if not bool(torch.isfinite(blk.sum(dtype=torch.float32))) and not bool(
            torch.isfinite(blk).all()
        ):
            return False
    return True


def nonfinite_input(s: Source, ctx: JobContext) -> InputError:
    """The error for a source holding NaN or Inf values."""
    return InputError(
        f"{ctx.inputs[s.input].url}/{s.file}: tensor {s.tensor!r} holds NaN or Inf values; "
        "pass --allow-nonfinite to merge anyway"
    )


def _decode(
    s: Source, data: Any, extra: Extra, shape: tuple[int, ...], ctx: JobContext, check: bool
) -> torch.Tensor:
    """One source's elements: decoded, dequantised, LoRA-updated; checked finite."""
    sdata, lbufs = extra
    t = decode(data, s.dtype, shape)
    if s.scale is not None:
        t = dequantize(t, decode(sdata, s.scale.dtype, s.scale.shape), s.scale)
    if check and not ctx.allow_nonfinite and not finite(t):
        raise nonfinite_input(s, ctx)
    if s.lora is not None:
        t = apply_lora(t, s.lora, lbufs or [])
        if check and not ctx.allow_nonfinite and not finite(t):  # the adapter's A/B, or overflow
            lora = s.lora.target
            raise InputError(
                f"{ctx.inputs[lora.input].url}: the LoRA update of tensor {s.tensor!r} (from "
                f"{lora.a.name!r}, {lora.b.name!r}) holds NaN or Inf values; pass "
                "--allow-nonfinite to merge anyway"
            )
    return t


def _row_shape(s: Source, row_shape: tuple[int, ...]) -> tuple[int, ...]:
    n = (s.end - s.start) // itemsize(s.dtype)
    return (n // max(1, math.prod(row_shape)), *row_shape)


def piece_inputs(
    p: Piece, raw: list[Any], extra: list[Extra], ctx: JobContext, device: str, check: bool = True
) -> list[torch.Tensor]:
    """The method's inputs of a piece, in piece order (the base first when it has one), in
    their stored dtype (the engine converts them block by block) or float32 where dequantised
    or LoRA-updated; a vocabulary piece's in the math dtype, rows gathered. ``check``: refuse
    NaN/Inf inputs (unless allowed) now; False where the method propagates them, so the caller
    checks the result instead (one pass fewer)."""
    if p.vocab is None:
        shapes = [p.piece_shape] * len(p.sources)
    else:
        shapes = [_row_shape(s, p.vocab.row_shape) for s in p.sources]
    check = (check or p.vocab is not None) and not p.copy  # gathered rows: name the source
    xs = [_decode(s, d, e, sh, ctx, check) for s, d, e, sh in zip(p.sources, raw, extra, shapes)]
    if p.vocab is not None:
        vt = p.vocab.tensor
        pads = pad_rows(vt, p.vocab.dtype, ctx) if vt is not None else None
        xs = assemble(p.vocab, xs, pads)
    if device == "cpu":
        return xs
    # through page-locked memory (torch caches those blocks): a DMA copy, no staging
    return [t.pin_memory().to(device=device, non_blocking=True) for t in xs]


def assemble(
    vp: VocabPiece, rows: Sequence[torch.Tensor], pads: Sequence[torch.Tensor] | None
) -> list[torch.Tensor]:
    """Each method input of a vocabulary piece: its runs of rows, its mean rows (summed in
    order in the math dtype, then divided, as mergekit does), zeros, and padding rows."""
    dtype = DTYPES[vp.dtype][0]
    out = []
    for k, slot in enumerate(vp.slots):
        x = torch.zeros((vp.rows, *vp.row_shape), dtype=dtype)
        for run in slot.runs:
            x[run.out : run.out + run.n] = rows[run.src][run.row : run.row + run.n]
        for m in slot.means:
            acc = torch.zeros(vp.row_shape, dtype=dtype)
            for src, r in m.terms:
                acc = acc + rows[src][r].to(dtype)
            x[m.out] = acc / len(m.terms)
        if pads is not None and vp.pad < vp.rows:
            x[vp.pad :] = pads[k]
        out.append(x)
    return out


def pad_rows(vt: VocabTensor, dtype: str, ctx: JobContext) -> list[torch.Tensor]:
    """Each method input's padding row: the mean of its aligned rows [0, real) (gathered in
    ``dtype``, as the pieces gather them), summed in float64 over the plan's fixed blocks (read
    here, a block at a time), so every piece of every chunking gets the same row."""
    acc = [torch.zeros(vt.row_shape, dtype=torch.float64) for _ in vt.slots]
    for b0 in range(0, vt.real, vt.block_rows):
        b1 = min(vt.real, b0 + vt.block_rows)
        sources, slots = rows_of_piece(vt, b0, b1)
        raw, extra, _ = read_sources([sources], ctx)
        rows = [
            _decode(s, d, e, _row_shape(s, vt.row_shape), ctx, True)
            for s, d, e in zip(sources, raw[0], extra[0])
        ]
        vp = VocabPiece(b1 - b0, vt.row_shape, dtype, slots, b1 - b0)
        for a, x in zip(acc, assemble(vp, rows, None)):
            a += x.sum(dim=0, dtype=torch.float64)
    return [a / max(1, vt.real) for a in acc]


__all__ = [
    "assemble",
    "finite",
    "nonfinite_input",
    "pad_rows",
    "piece_inputs",
    "read_pieces",
    "recheck_inputs",
]
