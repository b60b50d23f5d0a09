"""Test helpers: reference merges computed in-process, and output readers."""

from __future__ import annotations

import glob
import os

import torch
from safetensors.torch import load_file

from raymerge.config import MergeConfig
from raymerge.layers import find_stacks, position
from raymerge.methods import merge_whole
from raymerge.params import resolve_parameters


def load_model(folder: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        out.update(load_file(f))
    return out


def reference_merge(
    cfg: MergeConfig, out_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """What the output must be: the kernel applied to whole tensors loaded with safetensors."""
    models = {ref: load_model(ref) for ref in cfg.input_refs()}
    first = models[cfg.input_refs()[0]]
    stacks = find_stacks(first)
    method = cfg.method
    out = {}
    for name, t in first.items():
        params = resolve_parameters(cfg, name, position(name, stacks))
        wide, per = dict(params.method), list(params.models)
        base = models[cfg.base_model][name].float() if method.uses_base(cfg.base_model) else None
        xs = [models[m.model][name].float() for m in cfg.merged_models()]
        merged = merge_whole(
            method.name, base, xs, per, wide, tensor_name=name, seed=cfg.random_seed
        )
        out[name] = merged.to(out_dtype or t.dtype)
    return out


def shard_bytes(folder: str) -> dict[str, bytes]:
    return {
        os.path.basename(f): open(f, "rb").read()
        for f in sorted(glob.glob(os.path.join(folder, "model-*.safetensors")))
    }


def task_arithmetic_config(refs, s3_options=None) -> dict:
    """base + 0.5 * (ft1 - base) + 0.5 * (ft2 - base), lambda 0.9; S3 options for s3:// refs."""
    base, ft1, ft2 = refs
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [
            {"model": ft1, "parameters": {"weight": 0.5}},
            {"model": ft2, "parameters": {"weight": 0.5}},
        ],
        "parameters": {"lambda": 0.9},
    }
    if s3_options:
        cfg["storage_options"] = {"s3://": s3_options}
    return cfg
