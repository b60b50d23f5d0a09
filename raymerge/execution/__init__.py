"""Running a plan's jobs: on a Ray cluster (the only code that imports Ray), or in-process.

- :mod:`~raymerge.execution.driver`: :func:`execute`, a plan's jobs on the cluster;
- :mod:`~raymerge.execution.local`: the same jobs on threads of this process (small merges, no
  Ray);
- :mod:`~raymerge.execution.cluster`: connect to a cluster, or start a local one;
- :mod:`~raymerge.execution.schedule`: what runs when (pure; tested without Ray);
- :mod:`~raymerge.execution.submit`: bounded submission, resources, retries;
- :mod:`~raymerge.execution.retry`: the failure policy (user error / retry / give up);
- :mod:`~raymerge.execution.tasks`: the task bodies; :mod:`~raymerge.execution.pool`: warm
  worker actors;
- :mod:`~raymerge.execution.zipit_stage`: ZipIt's statistics and matching stage.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ExecResult": "raymerge.results",
    "execute": "raymerge.execution.driver",
    "connect": "raymerge.execution.cluster",
    "disconnect": "raymerge.execution.cluster",
    "ZipStage": "raymerge.execution.zipit_stage",
}


def __getattr__(name: str) -> Any:  # lazily: the pure schedule module loads without Ray
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'raymerge.execution' has no attribute {name!r}")


__all__ = list(_API)
