"""The stages of a layer-streamed statistics pass (pure): which tensors each reads, which spaces
each finishes (:mod:`raymerge.zipit.stream` runs them; :mod:`raymerge.zipit.budget` sizes them).

MLP: stage i = ``layers.{i}.*`` (space ``h{i}``). Decoder: stage 0 = the embedding (the
residual's first rows), stage 1 + l = layer l (spaces ``attn.{l}``, ``mlp.{l}``, and the residual
after its attention and MLP blocks); the residual space is finished after the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence


def stage_tensors(arch: str, names: Sequence[str], stage: int) -> list[str]:
    """The tensors stage ``stage`` reads (of each model), in the checkpoint's order."""
    if arch == "mlp":
        want = (f"layers.{stage}.weight", f"layers.{stage}.bias")
        return [n for n in names if n in want]
    if stage == 0:
        return ["model.embed_tokens.weight"]
    prefix = f"model.layers.{stage - 1}."
    return [n for n in names if n.startswith(prefix)]


def n_stages(arch: str, depth: int) -> int:
    """Stages of a statistics pass over ``depth`` layers (the embedding is one for decoders)."""
    return depth if arch == "mlp" else depth + 1


def finished_at(arch: str, stage: int, depth: int, spaces: Sequence[str]) -> list[str]:
    """The spaces (of ``spaces``, in that order) whose statistics are complete after ``stage``."""
    if arch == "mlp":
        done = {f"h{stage}"}
    else:
        done = {f"attn.{stage - 1}", f"mlp.{stage - 1}"} if stage else set()
        if stage == depth:
            done.add("res")
    return [s for s in spaces if s in done]


__all__ = ["finished_at", "n_stages", "stage_tensors"]
