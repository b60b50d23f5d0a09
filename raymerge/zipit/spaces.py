"""Feature spaces of a checkpoint and how every tensor moves with them (pure, headers only).

ZipIt! (Stoica et al., ICLR 2024, https://arxiv.org/abs/2305.03053) merges models whose hidden
features are not aligned. A *feature space* is a set of features that one matching reorders and
merges consistently: every tensor that writes those features (its output rows, a bias, a norm
weight) is *merged* (M: the average over a cluster's members, over all models), and every tensor
that reads them (its input columns) is *unmerged* (U: the columns of a cluster's members summed).
For model k's weight W^k [out, in] the zipped weight is ``W' = sum_k M_out^k W^k U_in^k``.

Supported architectures (:func:`detect`):

- ``mlp``: a plain multilayer perceptron stored as ``layers.{i}.weight`` [out, in] and optional
  ``layers.{i}.bias`` [out], ReLU between layers, no activation after the last (the paper's small
  test bed). Space ``h{i}`` = outputs of layer i (after ReLU), for every layer but the last, whose
  outputs (logits over the shared label set) are averaged.
- ``llama``: Llama/Mistral/Qwen2 decoders (Hugging Face names, ``config.json``). Spaces:
  ``res``: the residual stream, one space for the whole depth (embedding columns, every norm,
  every reader's input columns and every writer's output rows, lm_head columns); ``mlp.{l}``: the
  MLP intermediate features of layer l (gate/up rows, down columns); ``attn.{l}``: the attention
  heads of layer l, matched as whole key/value groups (a unit is one KV head with its query heads,
  so GQA groups and RoPE pairs inside a head stay intact; heads are never merged within a model).

Partial zip (``stop_at: k``): layers 0..k-1 are zipped into a shared trunk and each model keeps
its own layers k.. . MLPs: one checkpoint whose heads are stored as ``heads.{j}.layers.{i}.*``,
the first layer of each reading the trunk's merged features through model j's unmerge (folded
into its weight; :func:`raymerge.zipit.forward.mlp_forward` loads it). Decoders: one ordinary
checkpoint per model, ``model_{j}/`` (:mod:`raymerge.zipit.partial`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MLP_RE = re.compile(r"^layers\.(\d+)\.(weight|bias)$")
LLAMA_TYPES = ("llama", "mistral", "qwen2")
MODES = ("merge", "unmerge", "mean", "own")


@dataclass(frozen=True)
class Axis:
    """How one tensor axis moves: ``mode`` "merge" (rows written into ``space``: cluster average),
    "unmerge" (columns read from ``space``: cluster sum), "mean" (plain average over the
    sources, for shared outputs such as logits) or "own" (a one-model tensor's rows written into
    ``space``: the average over that model's own members of each cluster, 0 where it has none;
    a partial zip's heads). ``expand``: tensor entries per space unit."""

    dim: int
    space: str
    mode: str
    expand: int = 1

    def as_json(self) -> list[Any]:
        return [self.dim, self.space, self.mode, self.expand]


@dataclass(frozen=True)
class Space:
    """A matchable feature space: ``units`` per model, each ``group`` features wide."""

    name: str
    units: int
    group: int = 1
    within: bool = True  # may two units of one model be merged?


@dataclass(frozen=True)
class ZipTensor:
    """One output tensor: its sources ``(model index, tensor name)`` and its axes."""

    name: str
    reads: tuple[tuple[int, str], ...]
    axes: tuple[Axis, ...]

    @property
    def models(self) -> tuple[int, ...]:
        """The model index of each source."""
        return tuple(k for k, _ in self.reads)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The feature spaces this tensor's axes merge or unmerge (whose matchings it needs)."""
        return tuple(dict.fromkeys(a.space for a in self.axes if a.mode != "mean"))

    def as_json(self) -> dict[str, Any]:
        """The manifest's form: ``{"axes": [[dim, space, mode, expand], ...], "models": [...]}``."""
        return {"axes": [a.as_json() for a in self.axes], "models": list(self.models)}


@dataclass(frozen=True)
class ZipLayout:
    """The spaces to match and every output tensor. ``depth``: the layers whose features the
    statistics need (a partial zip's trunk); ``checkpoints``: one output folder per model (a
    decoder partial zip), else ``()`` (one checkpoint in OUT)."""

    arch: str
    spaces: tuple[Space, ...]
    tensors: tuple[ZipTensor, ...]
    depth: int = 0
    checkpoints: tuple[str, ...] = ()

    def space(self, name: str) -> Space:
        return next(s for s in self.spaces if s.name == name)


def detect(names: Sequence[str], config: Mapping[str, Any] | None) -> str:
    """The architecture of a checkpoint: "llama" (from config.json) or "mlp" (from names)."""
    model_type = (config or {}).get("model_type")
    if model_type in LLAMA_TYPES:
        return "llama"
    if names and all(MLP_RE.match(n) for n in names):
        return "mlp"
    raise ValueError(
        f"zipit supports Llama-family decoders (config.json model_type in {list(LLAMA_TYPES)}) "
        f"and plain MLPs (tensors 'layers.{{i}}.weight' / 'layers.{{i}}.bias'); got model_type "
        f"{model_type!r} with tensors {list(names)[:4]}"
    )


def describe(
    shapes: Mapping[str, tuple[int, ...]],
    config: Mapping[str, Any] | None,
    n_models: int,
    stop_at: int | None = None,
) -> ZipLayout:
    """Spaces and output tensors for zipping ``n_models`` models shaped like ``shapes``."""
    arch = detect(list(shapes), config)
    if arch == "mlp":
        return _mlp(shapes, n_models, stop_at)
    full = _llama(shapes, dict(config or {}), n_models)
    if stop_at is None:
        return full
    from raymerge.zipit.partial import llama_partial

    return llama_partial(full, stop_at)


def _mlp(shapes: Mapping[str, tuple[int, ...]], n_models: int, stop_at: int | None) -> ZipLayout:
    layers = sorted({int(MLP_RE.match(n).group(1)) for n in shapes})  # type: ignore[union-attr]
    if layers != list(range(len(layers))):
        raise ValueError(f"MLP layers must be numbered 0..L-1, got {layers}")
    n = len(layers)
    for i in layers:
        w = shapes.get(f"layers.{i}.weight")
        if w is None or len(w) != 2:
            raise ValueError(f"layers.{i}.weight must exist and be 2-D, got {w}")
        if i and shapes[f"layers.{i - 1}.weight"][0] != w[1]:
            raise ValueError(
                f"layers.{i}.weight {list(w)} does not read layer {i - 1}'s "
                f"{shapes[f'layers.{i - 1}.weight'][0]} outputs"
            )
    if n < 2:
        raise ValueError("an MLP needs at least 2 layers (one hidden feature space) to zip")
    k = n - 1 if stop_at is None else stop_at
    if not 1 <= k <= n - 1:
        raise ValueError(f"stop_at must be in [1, {n - 1}] for this {n}-layer MLP, got {stop_at}")
    spaces = tuple(Space(f"h{i}", shapes[f"layers.{i}.weight"][0]) for i in range(k))
    models = range(n_models)

    def axes(i: int, kind: str, trunk: bool) -> tuple[Axis, ...]:
        out: list[Axis] = []
        if trunk:
            out.append(Axis(0, f"h{i}", "merge") if i < n - 1 else Axis(0, "", "mean"))
        if kind == "weight" and i > 0 and i <= k:
            out.append(Axis(1, f"h{i - 1}", "unmerge"))
        return tuple(out)

    tensors: list[ZipTensor] = []
    for name in shapes:
        i, kind = MLP_RE.match(name).groups()  # type: ignore[union-attr]
        i = int(i)
        if stop_at is None or i < k:
            tensors.append(ZipTensor(name, tuple((m, name) for m in models), axes(i, kind, True)))
    if stop_at is not None:
        for j in models:
            for name in shapes:
                i, kind = MLP_RE.match(name).groups()  # type: ignore[union-attr]
                if int(i) >= k:
                    tensors.append(
                        ZipTensor(f"heads.{j}.{name}", ((j, name),), axes(int(i), kind, False))
                    )
    return ZipLayout("mlp", spaces, tuple(tensors), depth=k)


LLAMA_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _llama(shapes: Mapping[str, tuple[int, ...]], config: dict[str, Any], n_models: int):
    if "lm_head.weight" not in shapes:
        raise ValueError(
            "zipit needs an lm_head.weight tensor: with tied embeddings the zipped embedding "
            "(merged columns) and lm_head (unmerged columns) differ"
        )
    spaces: dict[str, Space] = {"res": Space("res", int(config["hidden_size"]))}
    tensors = [
        ZipTensor(
            name,
            tuple((k, name) for k in range(n_models)),
            _llama_axes(name, shape, config, spaces),
        )
        for name, shape in shapes.items()
    ]
    return ZipLayout(
        "llama", tuple(spaces.values()), tuple(tensors), depth=int(config["num_hidden_layers"])
    )


def _llama_axes(
    name: str, shape: tuple[int, ...], config: dict[str, Any], spaces: dict[str, Space]
) -> tuple[Axis, ...]:
    """How tensor ``name`` of a decoder moves in a full zip; registers the spaces it touches."""
    d = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    hd = int(config.get("head_dim") or d // heads)
    rep = heads // kv
    m = LLAMA_LAYER.match(name)
    if name == "model.embed_tokens.weight":
        return (Axis(1, "res", "merge"),)
    if name == "model.norm.weight":
        return (Axis(0, "res", "merge"),)
    if name == "lm_head.weight":
        return (Axis(0, "", "mean"), Axis(1, "res", "unmerge"))
    if not m:
        raise ValueError(f"zipit does not know how tensor {name!r} moves")
    layer, rest = int(m.group(1)), m.group(2)
    attn, mlp = f"attn.{layer}", f"mlp.{layer}"
    if rest in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        return (Axis(0, "res", "merge"),)
    if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
        spaces.setdefault(attn, Space(attn, kv, rep * hd, within=False))
        rows = rep * hd if rest.startswith("self_attn.q_proj.") else hd
        axes = (Axis(0, attn, "merge", rows),)
        return axes + ((Axis(1, "res", "unmerge"),) if rest.endswith(".weight") else ())
    if rest == "self_attn.o_proj.weight":
        spaces.setdefault(attn, Space(attn, kv, rep * hd, within=False))
        return (Axis(0, "res", "merge"), Axis(1, attn, "unmerge", rep * hd))
    if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        spaces.setdefault(mlp, Space(mlp, shape[0]))
        return (Axis(0, mlp, "merge"), Axis(1, "res", "unmerge"))
    if rest == "mlp.down_proj.weight":
        spaces.setdefault(mlp, Space(mlp, shape[1]))
        return (Axis(0, "res", "merge"), Axis(1, mlp, "unmerge"))
    raise ValueError(f"zipit does not know how tensor {name!r} moves")
