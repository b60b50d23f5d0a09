"""raymerge: model merging for very large checkpoints, run as a distributed pipeline on Ray.

The public API (imported lazily, so ``import raymerge`` stays cheap and loads no Ray):

- :func:`load_config` -> :class:`~raymerge.config.MergeConfig` (every problem at once);
- :class:`RunOptions` / :class:`ExecOptions` (every option and default, :mod:`raymerge.options`);
- :func:`build_plan` (headers only) and :func:`run_merge` (the whole pipeline);
- :func:`verify_output` (an output against its manifest), :func:`resolve` (URL -> Location);
- :class:`RaymergeError` (exit code 2: the user's input), :func:`redact`.

The layout: ``config``/``params``/``options`` (what to do), ``io/`` (headers, range reads,
sinks), ``plan/`` (pure planning), ``methods/`` (pure kernels), ``worker`` (one job, no Ray),
``execution/`` (the only Ray code), ``pipeline`` / ``output`` / ``commit`` (a run end to end),
``manifest`` / ``ledger`` / ``verify``, ``zipit/``, ``cli/``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from raymerge.errors import RaymergeError  # noqa: E402

_API = {
    "load_config": "raymerge.config",
    "MergeConfig": "raymerge.config",
    "RunOptions": "raymerge.options",
    "ExecOptions": "raymerge.options",
    "build_plan": "raymerge.pipeline",
    "load_inputs": "raymerge.pipeline",
    "run_merge": "raymerge.pipeline",
    "RunHooks": "raymerge.pipeline",
    "verify_output": "raymerge.verify",
    "resolve": "raymerge.storage",
    "redact": "raymerge.redaction",
    "SUCCESS": "raymerge.output",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'raymerge' has no attribute {name!r}")


__all__ = ["RaymergeError", "__version__", *_API]
