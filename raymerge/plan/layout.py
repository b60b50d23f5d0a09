"""Phase 1 of planning: output tensors -> shards, with every header and offset fixed up front.

Hugging Face's rule: tensors go to the current shard in output order; a new shard starts when the
next tensor would overflow ``shard_size`` data bytes (a tensor larger than that gets a shard of
its own). Each shard's header is built now, so every tensor's absolute offset is known before
any compute and each job can write its bytes straight to their final place.

An output of several checkpoints (a decoder partial zip: one per model) names its tensors
``{folder}/{tensor}``; each folder gets shards of its own, ``{folder}/model-0000i-of-0000n...``,
whose headers hold the plain tensor names.
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
    folders: Sequence[str] = (),
) -> tuple[list[ShardPlan], dict[str, tuple[int, int]]]:
    """Shards for tensors ``names`` (in output order); with ``folders``, one set of shards per
    folder (every name is ``{folder}/{tensor}``), in folder order.

    Returns:
        The shards, and per tensor ``(shard index, absolute byte offset of its data)``.
    """
    if not folders:
        return _layout(names, shape_of, dtype_of, shard_size, "", 0)
    shards: list[ShardPlan] = []
    offsets: dict[str, tuple[int, int]] = {}
    for folder in folders:
        members = [n for n in names if n.startswith(folder + "/")]
        got, offs = _layout(members, shape_of, dtype_of, shard_size, folder + "/", len(shards))
        shards += got
        offsets.update(offs)
    if len(offsets) != len(names):
        stray = [n for n in names if n not in offsets][:3]
        raise ValueError(f"output tensors {stray} are in none of the folders {list(folders)}")
    return shards, offsets


def _layout(names, shape_of, dtype_of, shard_size, prefix: str, first: int):
    """One folder's shards (indices from ``first``; headers name tensors without ``prefix``)."""
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
    cut = len(prefix)
    for gi, members in enumerate(groups):
        si = first + gi
        header, laid = build_header([(n[cut:], dtype_of(n), shape_of(n)) for n in members])
        for n, e in zip(members, laid):
            offsets[n] = (si, len(header) + e.begin)
        size = len(header) + (laid[-1].end if laid else 0)
        name = prefix + shard_name(gi, len(groups))
        shards.append(ShardPlan(si, name, header, size, tuple(members)))
    return shards, offsets
