"""Tiny deterministic Llama-shaped checkpoints, for the demo, the tests and the benchmarks.

Written with the reference ``safetensors`` writer (so our reader is tested against it), sharded
with a ``model.safetensors.index.json`` like Hugging Face checkpoints, plus a loadable
``config.json``. A "family" is a base model and fine-tunes that are base + small noise, which is
what merging is for.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from safetensors.torch import save_file


def llama_config(
    hidden: int = 64,
    intermediate: int = 172,
    layers: int = 2,
    vocab: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    tie_embeddings: bool = False,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tie_embeddings,
        "torch_dtype": dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def llama_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
            }
        )
    shapes["model.norm.weight"] = (h,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def random_weights(cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in llama_shapes(cfg).items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g) * (1.0 / math.sqrt(shape[-1]))
    return out


def save_checkpoint(
    path: str,
    tensors: dict[str, torch.Tensor],
    cfg: dict[str, Any] | None,
    *,
    n_shards: int = 2,
    dtype: torch.dtype = torch.bfloat16,
) -> str:
    """Write ``tensors`` as HF-style shards (or one ``model.safetensors`` when n_shards == 1)."""
    os.makedirs(path, exist_ok=True)
    names = list(tensors)
    cast = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    if n_shards <= 1:
        save_file(cast, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        per = math.ceil(len(names) / n_shards)
        groups = [names[k : k + per] for k in range(0, len(names), per)]
        weight_map = {}
        total = 0
        for g, group in enumerate(groups):
            fname = f"model-{g + 1:05d}-of-{len(groups):05d}.safetensors"
            save_file(
                {k: cast[k] for k in group}, os.path.join(path, fname), metadata={"format": "pt"}
            )
            for k in group:
                weight_map[k] = fname
                total += cast[k].numel() * cast[k].element_size()
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if cfg is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    return path


def make_family(
    root: str,
    n_finetunes: int = 2,
    *,
    cfg: dict[str, Any] | None = None,
    seed: int = 0,
    noise: float = 0.02,
    n_shards: int = 2,
    dtype: torch.dtype = torch.bfloat16,
) -> list[str]:
    """A base model and ``n_finetunes`` fine-tunes (base + noise); returns their folders."""
    cfg = cfg or llama_config()
    base = random_weights(cfg, seed)
    paths = [save_checkpoint(os.path.join(root, "base"), base, cfg, n_shards=n_shards, dtype=dtype)]
    for k in range(n_finetunes):
        g = torch.Generator().manual_seed(seed * 1000 + k + 1)
        ft = {
            n: t + noise * torch.randn(t.shape, generator=g) * t.abs().mean()
            for n, t in base.items()
        }
        paths.append(
            save_checkpoint(
                os.path.join(root, f"ft{k + 1}"), ft, cfg, n_shards=n_shards, dtype=dtype
            )
        )
    return paths
