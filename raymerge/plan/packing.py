"""Phase 3 of planning: consecutive pieces of a shard -> jobs (contiguous byte ranges).

Pieces are packed in offset order while a job's planned memory fits the budget and its output
fits the job size target. A job maps one-to-one onto a part of an S3 multipart upload, so every
job but a shard's last is folded forward until it holds at least ``min_part_bytes`` (S3's 5 MiB
part minimum; 0 for local outputs). The first job of a shard also writes the shard's header.
"""

from __future__ import annotations

from collections.abc import Sequence

from raymerge.plan.records import Job, Piece, ShardPlan

JOB_OVERHEAD_BYTES = 32 << 20  # fixed per-job allowance inside the budget (buffers, bookkeeping)


def _packs(pieces: Sequence[Piece], usable: int, job_bytes: int) -> list[list[Piece]]:
    packs: list[list[Piece]] = []
    mem = out = 0
    for p in pieces:
        if packs and mem + p.memory_bytes + p.block_bytes <= usable and out + p.nbytes <= job_bytes:
            packs[-1].append(p)
            mem += p.memory_bytes
            out += p.nbytes
        else:
            packs.append([p])
            mem, out = p.memory_bytes, p.nbytes
    return packs or [[]]


def _fold_small(packs: list[list[Piece]], header_len: int, min_part: int) -> list[list[Piece]]:
    """Merge packs forward until each (but the last) reaches ``min_part`` bytes."""
    merged: list[list[Piece]] = []
    carry: list[Piece] = []
    for k, pack in enumerate(packs):
        cur = carry + pack
        size = sum(p.nbytes for p in cur) + (header_len if not merged else 0)
        if size < min_part and k < len(packs) - 1:
            carry = cur
            continue
        merged.append(cur)
        carry = []
    return merged


def pack_jobs(
    shards: Sequence[ShardPlan],
    shard_pieces: Sequence[Sequence[Piece]],
    *,
    usable: int,
    job_bytes: int,
    min_part_bytes: int,
) -> list[Job]:
    """Jobs for every shard, numbered in shard order; ``usable``: the job memory budget less
    ``JOB_OVERHEAD_BYTES``."""
    jobs: list[Job] = []
    for si, pieces in enumerate(shard_pieces):
        header_len = len(shards[si].header)
        packs = _fold_small(_packs(pieces, usable, job_bytes), header_len, min_part_bytes)
        for part, pack in enumerate(packs, start=1):
            start = 0 if part == 1 else pack[0].out_start
            end = pack[-1].out_end if pack else header_len
            memory = (
                JOB_OVERHEAD_BYTES
                + sum(p.memory_bytes for p in pack)
                + max((p.block_bytes for p in pack), default=0)
            )
            jobs.append(Job(len(jobs), si, part, start, end, tuple(pack), memory))
    return jobs
