"""Forward passes that expose the features of every ZipIt space (pure torch, no transformers).

:func:`mlp_forward` also loads the multi-head checkpoints of a partial zip, and
:func:`llama_forward` is a plain re-implementation of the Hugging Face Llama/Mistral/Qwen2
decoder (RMSNorm, rotary embeddings without scaling, grouped-query causal attention, SwiGLU MLP),
checked against ``transformers`` in the tests. Both return ``(output, features)`` where
``features[space]`` is a [rows, features] matrix whose rows are observations, in the order the
statistics expect (:mod:`raymerge.zipit.spaces` names the spaces).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from raymerge.zipit.spaces import MLP_RE


def _mlp_layers(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> list[int]:
    out = set()
    for name in tensors:
        if name.startswith(prefix):
            m = MLP_RE.match(name[len(prefix) :])
            if m:
                out.add(int(m.group(1)))
    return sorted(out)


def mlp_forward(
    tensors: Mapping[str, torch.Tensor], x: torch.Tensor, *, features: bool = False
) -> tuple[torch.Tensor | list[torch.Tensor], dict[str, torch.Tensor]]:
    """Run an MLP checkpoint (``layers.{i}.weight``/``bias``, ReLU between layers).

    A partial-zip output (trunk ``layers.*`` plus ``heads.{j}.layers.*``) returns the list of
    every head's logits, in model order; a plain checkpoint returns its logits. With
    ``features``, also the post-ReLU outputs of every hidden layer as space ``h{i}``.
    """
    feats: dict[str, torch.Tensor] = {}
    trunk = _mlp_layers(tensors)
    heads = sorted({int(n.split(".")[1]) for n in tensors if n.startswith("heads.")})
    h = x.to(tensors[f"layers.{trunk[0]}.weight"].dtype)

    def run(h: torch.Tensor, prefix: str, layers: list[int], last: bool) -> torch.Tensor:
        for pos, i in enumerate(layers):
            weight = tensors[f"{prefix}layers.{i}.weight"]
            h = F.linear(h, weight, tensors.get(f"{prefix}layers.{i}.bias"))
            if not (last and pos == len(layers) - 1):
                h = torch.relu(h)
                if features and not prefix:
                    feats[f"h{i}"] = h
        return h

    h = run(h, "", trunk, last=not heads)
    if not heads:
        return h, feats
    return [run(h, f"heads.{j}.", _mlp_layers(tensors, f"heads.{j}."), True) for j in heads], feats


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(var + eps) * w


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def llama_forward(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    input_ids: torch.Tensor,
    *,
    features: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [B, T, V] of a Llama-family decoder; with ``features``, the features of spaces
    ``res`` (the residual stream after the embedding and after every attention and MLP block, all
    positions and depths stacked as rows), ``mlp.{l}`` (SwiGLU intermediates, the down_proj input)
    and ``attn.{l}`` (per-head attention outputs, the o_proj input)."""
    d = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    hd = int(config.get("head_dim") or d // n_heads)
    eps = float(config.get("rms_norm_eps", 1e-6))
    theta = float(config.get("rope_theta", 10000.0))
    n_layers = int(config["num_hidden_layers"])
    bsz, seq = input_ids.shape
    w = tensors
    x = F.embedding(input_ids, w["model.embed_tokens.weight"]).to(torch.float32)
    dt = x.dtype
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.arange(seq, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    mask = torch.full((seq, seq), float("-inf"), dtype=dt).triu(1)
    res: list[torch.Tensor] = [x]
    feats: dict[str, torch.Tensor] = {}

    def lin(h: torch.Tensor, name: str) -> torch.Tensor:
        bias = w.get(f"{name}.bias")
        return F.linear(h, w[f"{name}.weight"].to(dt), None if bias is None else bias.to(dt))

    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"].to(dt), eps)
        q = lin(h, p + "self_attn.q_proj").view(bsz, seq, n_heads, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(bsz, seq, n_kv, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(bsz, seq, n_kv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = q @ k.transpose(-1, -2) / hd**0.5 + mask
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, seq, n_heads * hd)
        x = x + lin(att, p + "self_attn.o_proj")
        res.append(x)
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"].to(dt), eps)
        inner = F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj")
        x = x + lin(inner, p + "mlp.down_proj")
        res.append(x)
        if features:
            feats[f"attn.{layer}"] = att.reshape(-1, n_heads * hd)
            feats[f"mlp.{layer}"] = inner.reshape(-1, inner.shape[-1])
    if features:
        feats["res"] = torch.cat([r.reshape(-1, d) for r in res])
    x = _rms_norm(x, w["model.norm.weight"].to(dt), eps)
    return F.linear(x, w["lm_head.weight"].to(dt)), feats
