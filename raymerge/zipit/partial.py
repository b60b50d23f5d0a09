"""Partial zip of Llama/Mistral/Qwen2 decoders (pure, headers only): one checkpoint per model.

``stop_at: k`` (1 <= k <= L) zips the embedding and layers 0..k-1 into a shared trunk; each model
j keeps its own layers k..L-1, final norm and lm_head. The output is one ordinary Hugging Face
checkpoint per model, ``OUT/model_{j}/`` (tensor names and config.json unchanged, so it loads as
``LlamaForCausalLM`` with no missing or unexpected keys), made of the zipped trunk and model j's
own layers with the residual space's matching folded in:

- the trunk's residual stream is the merged ``res`` space (n_out = hidden features); model j's
  own layers keep working in that basis, seeing its residual feature i as merged feature
  ``assign_j[i]`` (the unmerge ``U^j``: exact for a feature that is alone of its model in its
  cluster, as in a permutation);
- every tensor of model j's own layers that *reads* the residual (q/k/v, gate/up, lm_head) has
  ``U^j`` folded into its input columns (mode "unmerge": the columns of model j's members of a
  cluster summed); every tensor that *writes* it (o_proj, down_proj) and every norm weight over
  it (the layer norms, the final norm) is merged over model j's own members only (mode "own": the
  average of model j's members, 0 for clusters model j has none of). Per-layer spaces (attention
  heads, MLP features) never cross the boundary: layer k.. keep their own.

When every cluster of ``res`` holds exactly one feature of model j (``matcher: permute``, or
zipit with ``beta: 0`` for K = 2), model j's checkpoint computes model j's own layers k.. exactly
on the trunk's output. With within-model residual merges it is an approximation: two residual
features of model j that share a cluster carry their average, and the RMS norms of the layers
k.. also see the clusters model j has no member in.

With k = L nothing of the models' own layers remains and lm_head reads the trunk's residual, so
lm_head and the final norm are zipped as in the full zip: every checkpoint equals the full zip.
The statistics only run the trunk (``depth`` = k): the residual is matched on the embedding
output and the outputs of the trunk's attention and MLP blocks.

Trunk bytes are not shared between the K checkpoints: each holds its own copy (computed by its own
jobs, bit-identical), because a Hugging Face checkpoint must hold every tensor in its folder and
object stores have no links. The cost is (K - 1) x the trunk's bytes of extra writes and storage.
"""

from __future__ import annotations

from raymerge.zipit.spaces import LLAMA_LAYER, Axis, ZipLayout, ZipTensor

READERS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
)
WRITERS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def checkpoint_folder(j: int) -> str:
    """The output folder of model j's checkpoint, relative to OUT."""
    return f"model_{j}"


def head_axes(name: str) -> tuple[Axis, ...]:
    """How tensor ``name`` of model j's own layers (k.., final norm, lm_head) moves."""
    if name in ("model.norm.weight",):
        return (Axis(0, "res", "own"),)
    if name == "lm_head.weight":
        return (Axis(1, "res", "unmerge"),)
    m = LLAMA_LAYER.match(name)
    rest = m.group(2) if m else ""
    if rest in NORMS or rest in WRITERS:
        return (Axis(0, "res", "own"),)
    if rest in READERS:
        return (Axis(1, "res", "unmerge"),)
    if rest.endswith(".bias"):  # q/k/v biases (Qwen2): rows in the layer's own head space
        return ()
    raise ValueError(f"zipit does not know how tensor {name!r} of a partial zip's head moves")


def in_trunk(name: str, stop_at: int, n_layers: int) -> bool:
    """Whether output tensor ``name`` is zipped (the embedding, layers < stop_at, and lm_head
    and the final norm when the trunk is the whole depth)."""
    m = LLAMA_LAYER.match(name)
    if m:
        return int(m.group(1)) < stop_at
    return name == "model.embed_tokens.weight" or stop_at >= n_layers


def llama_partial(full: ZipLayout, stop_at: int) -> ZipLayout:
    """The partial-zip layout of a decoder, from its full-zip layout ``full``."""
    n_layers = full.depth
    if not 1 <= stop_at <= n_layers:
        raise ValueError(
            f"stop_at must be in [1, {n_layers}] for this {n_layers}-layer decoder, got {stop_at}"
        )
    keep = {"res"} | {f"{kind}.{i}" for kind in ("attn", "mlp") for i in range(stop_at)}
    spaces = tuple(s for s in full.spaces if s.name in keep)
    n_models = len(full.tensors[0].reads)
    tensors: list[ZipTensor] = []
    for j in range(n_models):
        folder = checkpoint_folder(j)
        for t in full.tensors:
            if in_trunk(t.name, stop_at, n_layers):
                tensors.append(ZipTensor(f"{folder}/{t.name}", t.reads, t.axes))
            else:
                tensors.append(ZipTensor(f"{folder}/{t.name}", ((j, t.name),), head_axes(t.name)))
    return ZipLayout(
        "llama",
        spaces,
        tuple(tensors),
        depth=stop_at,
        checkpoints=tuple(checkpoint_folder(j) for j in range(n_models)),
    )


__all__ = ["checkpoint_folder", "head_axes", "in_trunk", "llama_partial"]
