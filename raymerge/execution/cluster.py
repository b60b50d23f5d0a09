"""Connecting to a Ray cluster, or starting a local one for the run, with bounded waits.

``ray.init`` can wait for ever (a worker killed while it starts, a GCS that accepts connections
and never answers) or print 20 s of retries before failing (a cluster with token authentication
and a client without the token). Every wait here is bounded: connecting and starting run in a
thread joined with ``connect_timeout``; a cluster that wants a token is detected up front by one
direct call to its GCS. A timeout is a :class:`ClusterError` (exit 1) that says what was waited
for and for how long; a local Ray this command started is shut down (its processes killed).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from raymerge.errors import ClusterError, RaymergeError
from raymerge.options import ExecOptions

_CLIENT_PREFIXES = ("ray://", "http://", "https://")


class _QuietThreadWarning(logging.Filter):
    """Drop Ray's warning that ray.init did not set its SIGTERM handler (it runs in our connect
    thread; :func:`_bounded` sets the same handler on the main thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in str(record.msg)


def _bounded(fn: Callable[[], Any], timeout_s: float, what: str, on_timeout: Callable) -> Any:
    """``fn()`` in a thread; its result, or, after ``timeout_s`` without one, ``on_timeout()``
    and a :class:`ClusterError` naming ``what``.

    The thread then stays parked for the life of the process: a local Ray's processes are
    started with PR_SET_PDEATHSIG, which fires when the *thread* that started them exits."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc
        done.set()
        threading.Event().wait()  # park: see the docstring

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init does
    quiet = _QuietThreadWarning()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    try:
        threading.Thread(target=run, daemon=True, name="raymerge-ray").start()
        finished = done.wait(timeout_s if timeout_s > 0 else None)
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if not finished:
        on_timeout()
        raise ClusterError(
            f"timed out after {timeout_s:.0f} s waiting for {what}; nothing was written. Check "
            "that the cluster is up (`ray status`), or raise --connect-timeout",
            stuck=True,
        )
    if "error" in box:
        raise box["error"]
    return box.get("value")


def bounded_get(refs: list[Any], timeout: float, what: str) -> list[Any]:
    """``ray.get(refs)``, but a :class:`ClusterError` when none of them finishes for ``timeout``
    seconds (0: wait for ever): a stalled node or a task no node has the resources for."""
    left, last = list(refs), time.monotonic()
    while left:
        done, left = ray.wait(left, num_returns=len(left), timeout=5.0, fetch_local=False)
        if done:
            last = time.monotonic()
        elif timeout and time.monotonic() - last > timeout:
            raise ClusterError(
                f"no {what} finished for {timeout:.0f} s ({len(left)} waiting); nothing "
                "was committed. Tasks that never start usually ask for memory or GPUs no node "
                "has (`ray status` shows them pending); raise --stall-timeout for very slow "
                "storage or matching"
            )
    return ray.get(list(refs))


def _check_auth(address: str) -> None:
    """A cluster with token authentication refuses a client without the token: say what to
    set (``ray.init`` would retry for ~20 s and end in an unrelated-looking ConnectionError)."""
    if address in ("auto", "local") or address.startswith(_CLIENT_PREFIXES):
        return
    try:
        from ray._raylet import GcsClient
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except Exception as exc:  # noqa: BLE001 - classified by its text
        if "InvalidAuthToken" in str(exc) or type(exc).__name__ == "AuthenticationError":
            raise RaymergeError(
                f"the Ray cluster at {address} requires token authentication and this process "
                "has no token: export RAY_AUTH_MODE=token, and make the cluster's token "
                "available as ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN"
            ) from None
        # anything else: let ray.init report it


def _kill_children() -> None:
    """Stop the processes of a local Ray this process started (its GCS, raylet, workers)."""
    try:
        import psutil  # vendored by Ray
    except ImportError:
        return
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def connect(opts: ExecOptions) -> bool:
    """Connect to the given/ambient cluster, or start a local one. True if we started it."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    timeout = opts.connect_timeout
    if address:

        def attach() -> None:
            _check_auth(address)
            ray.init(address=address, log_to_driver=True)

        _bounded(attach, timeout, f"the Ray cluster at {address}", lambda: None)
        return False

    def start() -> None:
        ray.init(
            address="local",  # never attach silently to some other cluster on this machine
            num_cpus=opts.num_cpus,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )

    _bounded(start, timeout, "a local Ray cluster to start", _kill_children)
    return True


def disconnect(started: bool) -> None:
    """Shut down what :func:`connect` started (a local Ray); a shared cluster is left alone."""
    if started:
        ray.shutdown()


__all__ = ["connect", "disconnect"]
