"""Deferred imports: torch is imported on first use, not when a module is loaded.

The driver (config, planning, scheduling, commit) never touches a tensor for the per-tensor
methods, but importing torch costs 1-2 s, which is most of a small merge's fixed cost. Modules
that the driver loads and the workers run write::

    if TYPE_CHECKING:
        import torch
    else:
        from raymerge._lazy import torch

and touch ``torch`` only inside functions. The first attribute access imports the real module;
after that each access is one dictionary lookup.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A stand-in for module ``name`` that imports it on first attribute access."""

    def __getattr__(self, attr: str) -> Any:
        mod = sys.modules.get(self.__name__) or importlib.import_module(self.__name__)
        return getattr(mod, attr)


torch = LazyModule("torch")
