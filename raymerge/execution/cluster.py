"""Connecting to a Ray cluster, or starting a local one for the run."""

from __future__ import annotations

import os

import ray

from raymerge.options import ExecOptions


def connect(opts: ExecOptions) -> bool:
    """Connect to the given/ambient cluster, or start a local one. True if we started it."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    ray.init(
        address="local",  # never attach silently to some other cluster on this machine
        num_cpus=opts.num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    return True


def disconnect(started: bool) -> None:
    """Shut down what :func:`connect` started (a local Ray); a shared cluster is left alone."""
    if started:
        ray.shutdown()


__all__ = ["connect", "disconnect"]
