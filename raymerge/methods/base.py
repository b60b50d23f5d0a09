"""The merge-method contract: typed parameter specs and the method record the registry holds.

A method is a pure function of tensors (already in the math dtype, on the job's device) and
already-resolved parameters. It never sees files, Ray or fsspec, so it can be tested on tiny
tensors in milliseconds and run unchanged on CPU or GPU workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

Scope = Literal["model", "global"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method accepts.

    ``scope="model"`` parameters (``weight``, ``density``) may be set per model and fall back to
    the global ``parameters`` block (mergekit's tensor parameters); ``scope="global"`` ones
    (``normalize``, ``lambda``, ``t``) are method-wide and only valid at the top level.
    """

    name: str
    type: type
    scope: Scope
    default: Any = None
    required: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    doc: str = ""

    def check(self, value: Any) -> str | None:
        """Problem with one evaluated value, or None."""
        if self.type is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.type in (float, int):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {value!r}"
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                return f"must be in {self.range_text()}, got {value!r}"
            if self.high is not None and value > self.high:
                return f"must be in {self.range_text()}, got {value!r}"
        return None

    def range_text(self) -> str:
        lo = "(" if self.low_open else "["
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{lo}{low}, {high}]"


class Kernel(Protocol):
    def __call__(
        self,
        base: torch.Tensor | None,
        tensors: Sequence[torch.Tensor],
        model_params: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    ``base``: whether the method needs ``base_model`` ("required"), or ignores it ("ignored";
    like mergekit's linear, which averages only the listed models).
    ``work_bytes_per_element``: fp32 temporaries per output element beyond the raw inputs and the
    output itself, for the planner's memory estimate.
    """

    name: str
    kernel: Callable[..., torch.Tensor]
    params: tuple[ParamSpec, ...]
    base: Literal["required", "ignored"]
    work_bytes_per_element: int
    reference: str
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)
