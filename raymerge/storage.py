"""Model references and output URLs -> (fsspec filesystem, path).

One place decides how a string in a config becomes something we can read from or write to:

- ``/data/m``, ``./m``, ``file:///data/m``                      local files
- ``s3://bucket/prefix`` (s3fs), ``gs://``, ``az://``, ...      any fsspec protocol
- ``hf://org/repo@rev``                                         huggingface_hub's HfFileSystem
- ``org/repo`` (mergekit style) when no such local folder exists -> ``hf://org/repo``

Storage options come from the config's ``storage_options`` mapping (longest matching URL prefix
wins) and otherwise from the standard environment that the filesystem itself reads (for S3:
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, the credential chain). Nothing here is a module-level
global: callers pass the options in.

fsspec filesystems pickle by their constructor arguments, so a :class:`Location` can be shipped to
Ray workers, which re-create the filesystem on their side. Credentials may therefore travel inside
task arguments, but they are never printed (:func:`raymerge.redaction.redact`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from raymerge.errors import InputError
from raymerge.redaction import redact

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class Location:
    """A folder or file on some filesystem; picklable (fsspec filesystems pickle by arguments)."""

    fs: Any
    path: str
    url: str

    def child(self, name: str) -> Location:
        """The location ``name`` inside this folder."""
        sep = "" if self.path.endswith("/") else "/"
        usep = "" if self.url.endswith("/") else "/"
        return Location(self.fs, f"{self.path}{sep}{name}", f"{self.url}{usep}{name}")

    @property
    def is_local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    @property
    def protocol(self) -> str:
        p = self.fs.protocol
        return p[0] if isinstance(p, (tuple, list)) else p


def normalize_ref(ref: str) -> str:
    """Turn a model reference as written in a config into a URL.

    A reference without a protocol is a local path if it exists; otherwise a string shaped like a
    Hugging Face repo id (``org/name`` or ``org/name@revision``) means ``hf://org/name``, which
    is what mergekit users expect. Anything else stays a local path (and fails later with a clear
    "not found").
    """
    ref = ref.strip()
    if "://" in ref:
        return ref
    expanded = os.path.expanduser(ref)
    if os.path.exists(expanded):
        return os.path.abspath(expanded)
    if _HF_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return f"hf://{ref}"
    return os.path.abspath(expanded)


def options_for(url: str, storage_options: Mapping[str, Mapping[str, Any]] | None) -> dict:
    """The storage options of the longest prefix of ``url`` in ``storage_options``."""
    best: tuple[int, Mapping[str, Any]] = (-1, {})
    for prefix, opts in (storage_options or {}).items():
        if url.startswith(prefix) and len(prefix) > best[0]:
            best = (len(prefix), opts)
    return dict(best[1])


def resolve(ref: str, storage_options: Mapping[str, Mapping[str, Any]] | None = None) -> Location:
    """Resolve a model reference or output URL into a :class:`Location`."""
    url = normalize_ref(ref)
    opts = options_for(url, storage_options)
    try:
        import fsspec  # here, not at import: config and planning need no filesystem

        fs, path = fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{redact(url)}: cannot open this URL: {redact(str(exc))}") from None
    return Location(fs, path.rstrip("/") or path, url.rstrip("/") or url)


# the counter of the innermost counting_retries() scope of the current context. fsspec runs
# s3fs's coroutines on its own event-loop thread, but asyncio copies the submitting thread's
# context into each task, so a retry logged there is seen in the scope of the job that issued it
_SCOPE: ContextVar[list[int] | None] = ContextVar("raymerge_storage_retries", default=None)


class _RetryCounter(logging.Handler):
    """Counts botocore's retries (throttling, 5xx, dropped connections) in this process, and in
    the ``counting_retries`` scope of the request's context.

    botocore logs "Response received to retry, sleeping ..." at DEBUG on ``botocore.endpoint``
    whenever it retries a request. That logger is switched to DEBUG with this handler as its only
    handler (so the debug chatter goes nowhere); records of WARNING and above are passed on to
    the parent loggers' handlers unchanged.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            parent = logging.getLogger("botocore")
            if parent.isEnabledFor(record.levelno):
                parent.handle(record)
        elif str(record.msg).startswith("Response received to retry"):
            self.count += 1
            scope = _SCOPE.get()
            if scope is not None:
                scope[0] += 1


_COUNTER: _RetryCounter | None = None
_COUNTER_LOCK = threading.Lock()


def storage_retries() -> int:
    """Retries botocore made in this process so far (installs the counter on first use)."""
    global _COUNTER
    with _COUNTER_LOCK:
        if _COUNTER is None:
            _COUNTER = _RetryCounter()
            log = logging.getLogger("botocore.endpoint")
            log.addHandler(_COUNTER)
            log.setLevel(logging.DEBUG)
            log.propagate = False
        return _COUNTER.count


@contextmanager
def counting_retries() -> Iterator[list[int]]:
    """``[n]``: the storage retries of requests issued from this thread (or task) inside the
    ``with`` block. Unlike differences of :func:`storage_retries`, two jobs overlapping in one
    process (a pooled worker's two slots) each count only their own."""
    storage_retries()  # the handler is installed
    box = [0]
    token = _SCOPE.set(box)
    try:
        yield box
    finally:
        _SCOPE.reset(token)
