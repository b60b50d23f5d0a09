"""Phase 1 of planning: output tensors -> shards, with every header and offset fixed up front.

Hugging Face's rule: tensors go to the current shard in output order; a new shard starts when the
next tensor would overflow ``shard_size`` data bytes (a tensor larger than that gets a shard of
its own). Each shard's header is built now, so every tensor's absolute offset is known before
any compute and each job can write its bytes straight to their final place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from raymerge.io.header import build_header, itemsize
from raymerge.plan.records import ShardPlan, shard_name


def layout_shards(
    names: Sequence[str],
    shape_of: Callable[[str], tuple[int, ...]],
    dtype_of: Callable[[str], str],
    shard_size: int,
) -> tuple[list[ShardPlan], dict[str, tuple[int, int]]]:
    """Shards for tensors ``names`` (in output order).

    Returns:
        The shards, and per tensor ``(shard index, absolute byte offset of its data)``.
    """
    groups: list[list[str]] = [[]]
    filled = 0
    for name in names:
        nbytes = math.prod(shape_of(name)) * itemsize(dtype_of(name))
        if groups[-1] and filled + nbytes > shard_size:
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += nbytes
    shards: list[ShardPlan] = []
    offsets: dict[str, tuple[int, int]] = {}
    for si, members in enumerate(groups):
        header, laid = build_header([(n, dtype_of(n), shape_of(n)) for n in members])
        for e in laid:
            offsets[e.name] = (si, len(header) + e.begin)
        size = len(header) + (laid[-1].end if laid else 0)
        shards.append(ShardPlan(si, shard_name(si, len(groups)), header, size, tuple(members)))
    return shards, offsets
