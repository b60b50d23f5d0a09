"""Forward passes that expose the features of every ZipIt space (pure torch, no transformers).

:func:`mlp_forward` also loads the multi-head checkpoints of an MLP partial zip, and
:func:`llama_forward` is a plain re-implementation of the Hugging Face Llama/Mistral/Qwen2
decoder (RMSNorm, rotary embeddings without scaling, grouped-query causal attention, SwiGLU MLP),
checked against ``transformers`` in the tests. Both return ``(output, features)`` where
``features[space]`` is a [rows, features] matrix whose rows are observations, in the order the
statistics expect (:mod:`raymerge.zipit.spaces` names the spaces).

The per-layer steps (:func:`mlp_layer`, :func:`llama_embed`, :func:`llama_block`) are the ones
the layer-streamed statistics (:mod:`raymerge.zipit.stream`) run one layer at a time, so the
streamed activations are the all-in-memory ones bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


def mlp_layer(
    tensors: Mapping[str, torch.Tensor], i: int, h: torch.Tensor, *, relu: bool, prefix: str = ""
) -> torch.Tensor:
    """Layer ``i`` of an MLP checkpoint (``{prefix}layers.{i}.weight``/``bias``), then ReLU."""
    h = F.linear(h, tensors[f"{prefix}layers.{i}.weight"], tensors.get(f"{prefix}layers.{i}.bias"))
    return torch.relu(h) if relu else h


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
            relu = not (last and pos == len(layers) - 1)
            h = mlp_layer(tensors, i, h, relu=relu, prefix=prefix)
            if relu and features and not prefix:
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


@dataclass(frozen=True)
class LlamaShape:
    """What a decoder layer needs of config.json."""

    d: int
    heads: int
    kv: int
    hd: int
    eps: float
    theta: float
    layers: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> LlamaShape:
        d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(
            d=d,
            heads=heads,
            kv=int(config.get("num_key_value_heads") or heads),
            hd=int(config.get("head_dim") or d // heads),
            eps=float(config.get("rms_norm_eps", 1e-6)),
            theta=float(config.get("rope_theta", 10000.0)),
            layers=int(config["num_hidden_layers"]),
        )

    def rope(self, seq: int, dt: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """(cos, sin, causal mask) for sequences of length ``seq``."""
        inv = 1.0 / self.theta ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd)
        ang = torch.arange(seq, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        mask = torch.full((seq, seq), float("-inf"), dtype=dt).triu(1)
        return emb.cos().to(dt), emb.sin().to(dt), mask


def llama_embed(tensors: Mapping[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """The embedding rows of ``input_ids``, float32 [B, T, d] (the residual after depth 0)."""
    return F.embedding(input_ids, tensors["model.embed_tokens.weight"]).to(torch.float32)


def llama_block(
    w: Mapping[str, torch.Tensor],
    shape: LlamaShape,
    layer: int,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder layer ``layer`` on the residual ``x`` [B, T, d]: returns the residual after the
    attention block and after the MLP block, the per-head attention outputs (o_proj's input,
    [B, T, heads * hd]) and the SwiGLU intermediates (down_proj's input)."""
    cos, sin, mask = rope
    dt = x.dtype
    bsz, seq, _ = x.shape
    p = f"model.layers.{layer}."

    def lin(h: torch.Tensor, name: str) -> torch.Tensor:
        bias = w.get(f"{name}.bias")
        return F.linear(h, w[f"{name}.weight"].to(dt), None if bias is None else bias.to(dt))

    h = _rms_norm(x, w[p + "input_layernorm.weight"].to(dt), shape.eps)
    q = lin(h, p + "self_attn.q_proj").view(bsz, seq, shape.heads, shape.hd).transpose(1, 2)
    k = lin(h, p + "self_attn.k_proj").view(bsz, seq, shape.kv, shape.hd).transpose(1, 2)
    v = lin(h, p + "self_attn.v_proj").view(bsz, seq, shape.kv, shape.hd).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(shape.heads // shape.kv, dim=1)
    v = v.repeat_interleave(shape.heads // shape.kv, dim=1)
    scores = q @ k.transpose(-1, -2) / shape.hd**0.5 + mask
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, seq, shape.heads * shape.hd)
    x_attn = x + lin(att, p + "self_attn.o_proj")
    h = _rms_norm(x_attn, w[p + "post_attention_layernorm.weight"].to(dt), shape.eps)
    inner = F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj")
    return x_attn, x_attn + lin(inner, p + "mlp.down_proj"), att, inner


def llama_forward(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    input_ids: torch.Tensor,
    *,
    features: bool = False,
    layers: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [B, T, V] of a Llama-family decoder; with ``features``, the features of spaces
    ``res`` (the residual stream after the embedding and after every attention and MLP block, all
    positions and depths stacked as rows, depth-major), ``mlp.{l}`` (SwiGLU intermediates, the
    down_proj input) and ``attn.{l}`` (per-head attention outputs, the o_proj input).
    ``layers``: run only the first ``layers`` decoder layers (a partial zip's trunk; the logits
    are then None)."""
    shape = LlamaShape.of(config)
    n_layers = shape.layers if layers is None else layers
    x = llama_embed(tensors, input_ids)
    rope = shape.rope(input_ids.shape[1], x.dtype)
    res: list[torch.Tensor] = [x]
    feats: dict[str, torch.Tensor] = {}
    for layer in range(n_layers):
        x_attn, x, att, inner = llama_block(tensors, shape, layer, x, rope)
        res += [x_attn, x]
        if features:
            feats[f"attn.{layer}"] = att.reshape(-1, att.shape[-1])
            feats[f"mlp.{layer}"] = inner.reshape(-1, inner.shape[-1])
    if features:
        feats["res"] = torch.cat([r.reshape(-1, shape.d) for r in res])
    if n_layers < shape.layers:
        return None, feats  # type: ignore[return-value]
    x = _rms_norm(x, tensors["model.norm.weight"].to(x.dtype), shape.eps)
    return F.linear(x, tensors["lm_head.weight"].to(x.dtype)), feats
