"""mergekit 0.1.5 as an in-process reference: one merged tensor from plain torch tensors.

Uses mergekit's public tensor API, ``mergekit.merge_methods.merge_tensors``: the same method
objects (``mergekit.merge_methods.get(name)``) that ``mergekit-yaml`` runs per tensor, given one
``TensorGroup`` (inputs in order, one of them flagged as the base) and already-resolved
parameters. Shared parameters (mergekit's ``ParameterScope.SHARED``: normalize, lambda, rescale,
int8_mask, t, filter_wise) are scalars; per-input ones (``INPUT``/``NON_BASE``: weight, density,
gamma, epsilon) are mappings keyed by input id. Gradients and filters are *not* evaluated here:
callers pass the values for one tensor, as raymerge's ``merge_whole`` receives them.

mergekit is imported lazily so that this module can be imported without it; callers guard with
``pytest.importorskip("mergekit")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def mergekit_method(method: str):
    """The registered mergekit method object (raises RuntimeError for unknown names)."""
    from mergekit import merge_methods

    return merge_methods.get(method)


def mergekit_defaults(method: str) -> dict[str, tuple[str, Any]]:
    """``{param: (scope, default)}`` of a mergekit method; scope is "model" or "global" (raymerge's
    names) and default is ``None`` for required parameters."""
    from mergekit.merge_methods.base import ParameterScope

    out = {}
    for p in mergekit_method(method).spec.parameters:
        scope = "global" if p.scope == ParameterScope.SHARED else "model"
        out[p.name] = (scope, None if p.required else p.default)
    return out


def mergekit_merge(
    method: str,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    model_params: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    *,
    seed: int | None = None,
) -> torch.Tensor:
    """mergekit 0.1.5's result for one tensor.

    ``tensors`` are the non-base inputs, ``model_params[i]`` their per-model parameters and
    ``params`` the method-wide ones. Keys mergekit's method does not declare are ignored (the
    caller's dicts may carry raymerge-only parameters); missing ones take mergekit's defaults.
    ``base`` is passed as mergekit's base input, except for methods that ignore a base (linear),
    where it is dropped, as mergekit does when the base is not listed among the models.
    Inputs keep their dtype (use fp32 or fp64); the result has mergekit's output dtype.
    ``seed`` seeds torch's global RNG first (only randomised methods care).
    """
    from mergekit.merge_methods import merge_tensors
    from mergekit.merge_methods.base import BasePolicy, ParameterScope

    m = mergekit_method(method)
    spec = m.spec
    if len(model_params) != len(tensors):
        raise ValueError(f"{len(tensors)} tensors but {len(model_params)} model_params")

    inputs = list(tensors)
    per_model = [dict(p) for p in model_params]
    base_index = None
    if base is not None and spec.contract.base != BasePolicy.IGNORED:
        inputs = [base, *inputs]
        per_model = [{}, *per_model]
        base_index = 0

    ids = list(range(len(inputs)))
    parameters: dict[str, Any] = {}
    for p in spec.parameters:
        if p.scope == ParameterScope.SHARED:
            if p.name in params:
                parameters[p.name] = params[p.name]
            continue
        wanted = [
            i
            for i in ids
            if p.scope == ParameterScope.INPUT or i != base_index  # NON_BASE skips the base
        ]
        # A per-model value wins; then a method-wide value of the same name (mergekit's
        # precedence); otherwise mergekit's default (or its "missing parameter" error).
        values = {}
        for i in wanted:
            if p.name in per_model[i]:
                values[i] = per_model[i][p.name]
            elif p.name in params:
                values[i] = params[p.name]
            elif not p.required:
                values[i] = p.default
            else:
                raise TypeError(f"mergekit {method}: input {i} needs parameter {p.name!r}")
        parameters[p.name] = values

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        return merge_tensors(
            inputs, m, parameters=parameters, ids=ids, base_index=base_index, name="t"
        )


__all__ = ["mergekit_defaults", "mergekit_merge", "mergekit_method"]
