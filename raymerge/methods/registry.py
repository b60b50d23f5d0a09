"""The registry of merge methods: one explicit table, no registration by import side effect.

Adding a method is one file in :mod:`raymerge.methods` plus one entry here.
"""

from __future__ import annotations

from raymerge.methods.arcee_fusion import ARCEE_FUSION
from raymerge.methods.base import MergeMethod
from raymerge.methods.karcher import KARCHER
from raymerge.methods.linear import LINEAR
from raymerge.methods.model_stock import MODEL_STOCK
from raymerge.methods.multislerp import MULTISLERP
from raymerge.methods.nearswap import NEARSWAP
from raymerge.methods.nuslerp import NUSLERP
from raymerge.methods.passthrough import PASSTHROUGH
from raymerge.methods.ram import RAM, RAMPLUS_TL
from raymerge.methods.sce import SCE
from raymerge.methods.slerp import SLERP
from raymerge.methods.svd import ISO_C, ISO_CTS, TSV_M
from raymerge.methods.task_arithmetic import METHODS as TASK_VECTOR_METHODS
from raymerge.methods.zipit import PERMUTE, ZIPIT

REGISTRY: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        LINEAR,
        *TASK_VECTOR_METHODS,
        SLERP,
        MODEL_STOCK,
        PASSTHROUGH,
        NUSLERP,
        MULTISLERP,
        KARCHER,
        SCE,
        ARCEE_FUSION,
        NEARSWAP,
        RAM,
        RAMPLUS_TL,
        TSV_M,
        ISO_C,
        ISO_CTS,
        ZIPIT,
        PERMUTE,
    )
}


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; KeyError names the valid options."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; valid: {', '.join(REGISTRY)}") from None


__all__ = ["REGISTRY", "get_method"]
