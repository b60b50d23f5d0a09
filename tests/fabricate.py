"""Fabricated checkpoints at 70B scale: real headers, sparse (unwritten) data.

For planning and cost-model checks at Llama-3-70B size without 141 GB of disk.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from raymerge.io.header import build_header
from raymerge.synth import llama_config, llama_shapes


def llama3_70b_config() -> dict[str, Any]:
    """Llama-3-70B's shapes (80 layers, hidden 8192, MLP 28672, 64 heads / 8 KV heads)."""
    return llama_config(
        hidden=8192, intermediate=28672, layers=80, vocab=128256, heads=64, kv_heads=8
    )


def fabricate_checkpoint(path: str, cfg: dict[str, Any], n_shards: int = 30) -> int:
    """A sharded bf16 checkpoint of ``cfg``'s shapes with real headers and *sparse* data (nothing
    written after the headers), for planning at 70B scale without 141 GB of disk. Returns the
    tensor bytes per model."""
    shapes = llama_shapes(cfg)
    names = list(shapes)
    per = math.ceil(len(names) / n_shards)
    os.makedirs(path)
    weight_map = {}
    groups = [names[k : k + per] for k in range(0, len(names), per)]
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, laid = build_header([(n, "BF16", shapes[n]) for n in group])
        with open(os.path.join(path, fname), "wb") as f:
            f.write(header)
            f.truncate(len(header) + sum(e.nbytes for e in laid))
        weight_map.update(dict.fromkeys(group, fname))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return sum(math.prod(s) * 2 for s in shapes.values())
