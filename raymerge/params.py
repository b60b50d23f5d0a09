"""Per-tensor parameter resolution, mergekit's rules (pure: no I/O, no torch).

A parameter value is a scalar; a list of numbers is a gradient interpolated over the tensor's
position ``t`` in its layer stack (:func:`evaluate`; ``t``: :func:`raymerge.layers.position`);
a list of ``{filter: substring, value:
...}`` picks the first entry whose filter is a substring of the tensor name (no filter, or
``"*"``, matches everything). Precedence: the model's own value > the slice's > the global
``parameters`` > the method's default (:func:`resolve_parameters`).

The result is a :class:`ResolvedParams`, a frozen value carried by each planned piece; it becomes
JSON only at the manifest edge (:meth:`ResolvedParams.as_json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymerge.errors import ConfigError

if TYPE_CHECKING:
    from raymerge.config import MergeConfig


@dataclass(frozen=True)
class ResolvedParams:
    """The parameters of one tensor: method-wide values and one mapping per merged model.

    Values are plain JSON scalars, except typed values a method's planner adds (ZipIt's tensor
    layout), which serialise through their ``as_json()``."""

    method: Mapping[str, Any]
    models: tuple[Mapping[str, Any], ...]

    def as_json(self) -> str:
        """The manifest's ``params`` column: ``{"method": {...}, "models": [...]}``."""
        body = {"method": dict(self.method), "models": [dict(m) for m in self.models]}
        return json.dumps(body, sort_keys=True, default=_as_json)

    def __hash__(self) -> int:
        return hash(self.as_json())


def _as_json(value: Any) -> Any:
    if hasattr(value, "as_json"):
        return value.as_json()
    raise TypeError(f"parameter value {value!r} is not JSON-serialisable")


def uses_gradient(cfg: Any) -> bool:
    """Does any parameter of the config (global, per model, per slice or source, filtered or
    not) take a gradient list, whose value depends on the tensor's layer position?"""

    def grad(v: Any) -> bool:
        if isinstance(v, list):
            return any(isinstance(x, dict) and grad(x.get("value")) for x in v) or (
                len(v) > 0 and all(isinstance(x, (int, float)) for x in v)
            )
        return False

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            params = node.get("parameters")
            if isinstance(params, dict) and any(grad(v) for v in params.values()):
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(cfg.public_dict())


def evaluate(value: Any, tensor_name: str, t: float) -> Any:
    """Evaluate a parameter value for one tensor (mergekit semantics); None if no filter matched."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if all(isinstance(v, (bool, int, float, str)) for v in value):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return value[int(t * (len(value) - 1))]
        scaled = t * (len(value) - 1)
        i0 = int(scaled)
        i1 = min(len(value) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * value[i0] + frac * value[i1]
    for cond in value:
        filt = cond.get("filter")
        if filt is None or filt == "*" or filt in tensor_name:
            return evaluate(cond["value"], tensor_name, t)
    return None


def resolve_parameters(
    cfg: MergeConfig,
    tensor_name: str,
    t: float,
    entries: Sequence[Any] | None = None,
    slice_params: Mapping[str, Any] | None = None,
) -> ResolvedParams:
    """Parameters of one tensor at layer position ``t``.

    Args:
        cfg: the validated config.
        tensor_name: the output tensor's name (filters match against it).
        t: the tensor's position in its layer stack, in [0, 1].
        entries: the ``models`` list or a slice's ``sources`` (default: ``cfg.models``).
        slice_params: the slice's ``parameters`` block, if any.

    Returns:
        The method-wide values and one mapping per merged entry.
    """
    method = cfg.method
    merged = cfg.merged_of(entries if entries is not None else (cfg.models or []))
    layers = [slice_params or {}, cfg.parameters or {}]

    def shared(name: str) -> Any:
        for block in layers:
            if name in block:
                val = evaluate(block[name], tensor_name, t)
                if val is not None:
                    return val
        return None

    wide: dict[str, Any] = {}
    per_model: list[dict[str, Any]] = [{} for _ in merged]
    for spec in method.params:
        fallback = shared(spec.name)
        if spec.scope == "global":
            value = spec.default if fallback is None else fallback
            wide[spec.name] = _typed(spec.type, value, spec.name, tensor_name)
            continue
        for i, m in enumerate(merged):
            own = (m.parameters or {}).get(spec.name)
            val = evaluate(own, tensor_name, t) if own is not None else None
            if val is None:
                val = fallback
            if val is None:
                val = spec.default
            if val is None and spec.required:
                raise ConfigError(
                    [
                        f"parameter {spec.name!r} of model {m.model!r} has no value for tensor "
                        f"{tensor_name!r} (no filter matched and no fallback is given)"
                    ]
                )
            per_model[i][spec.name] = _typed(spec.type, val, spec.name, tensor_name)
    return ResolvedParams(wide, tuple(per_model))


def _typed(kind: type, v: Any, name: str, tensor_name: str) -> Any:
    if v is None:
        return None
    if kind is float:
        return float(v)
    if kind is int:
        if v != int(v):  # a gradient between whole numbers (mergekit: a validation error too)
            raise ConfigError(
                [
                    f"parameter {name!r} evaluates to {v!r} for tensor {tensor_name!r}; it must "
                    "be a whole number (a gradient of it must give whole numbers at every layer)"
                ]
            )
        return int(v)
    return v


__all__ = ["ResolvedParams", "evaluate", "resolve_parameters"]
