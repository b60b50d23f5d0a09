"""Merge methods: pure torch kernels behind one explicit registry.

Adding a method is one file in this package plus one line in ``REGISTRY``. Nothing registers
itself as an import side effect.
"""

from __future__ import annotations

from raymerge.methods.base import MergeMethod, ParamSpec
from raymerge.methods.linear import LINEAR
from raymerge.methods.task_arithmetic import TASK_ARITHMETIC

REGISTRY: dict[str, MergeMethod] = {m.name: m for m in (LINEAR, TASK_ARITHMETIC)}


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; KeyError names the valid options."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; valid: {', '.join(REGISTRY)}") from None


__all__ = ["REGISTRY", "MergeMethod", "ParamSpec", "get_method"]
