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
    # the reference as written, when it had no protocol and no local path of that name exists,
    # so it was taken for a Hub repo id (mergekit's `org/name`): errors then speak of the path
    hub_guess: str | None = None

    def child(self, name: str) -> Location:
        """The location ``name`` inside this folder."""
        sep = "" if self.path.endswith("/") else "/"
        usep = "" if self.url.endswith("/") else "/"
        return Location(
            self.fs, f"{self.path}{sep}{name}", f"{self.url}{usep}{name}", self.hub_guess
        )

    @property
    def is_local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    @property
    def protocol(self) -> str:
        p = self.fs.protocol
        return p[0] if isinstance(p, (tuple, list)) else p


def normalize_ref(ref: str, *, output: bool = False) -> str:
    """Turn a model reference as written in a config (or an output) into a URL.

    A reference without a protocol is a local path if it exists. Otherwise an input shaped like
    a Hugging Face repo id (``org/name`` or ``org/name@revision``) means ``hf://org/name``, as
    mergekit users expect; when the Hub has no such repo (or cannot be reached) the error is
    the local path's "not found" (see :func:`not_found`). An output is never a repo id.
    """
    ref = ref.strip()
    if "://" in ref:
        return ref
    expanded = os.path.expanduser(ref)
    if output or os.path.exists(expanded) or not is_hub_id(ref):
        return os.path.abspath(expanded)
    return f"hf://{ref}"


def is_hub_id(ref: str) -> bool:
    """``org/name`` or ``org/name@revision``, not a path-looking string."""
    return bool(_HF_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def not_found(loc: Location, detail: str = "") -> str:
    """The "model folder not found" message: for a reference taken for a Hub repo id, the
    local path's message, relative to which folder, and how to name a Hub repo."""
    if loc.hub_guess is None:
        return f"{loc.url}: model folder not found"
    why = f" ({detail})" if detail else ""
    return (
        f"{loc.hub_guess}: model folder not found: no such path relative to {os.getcwd()}, and "
        f"no Hugging Face Hub repo of that name could be read{why}. Give a local path that "
        f"exists, or name a Hub repo explicitly as hf://{loc.hub_guess}"
    )


def options_for(url: str, storage_options: Mapping[str, Mapping[str, Any]] | None) -> dict:
    """The storage options of the longest prefix of ``url`` in ``storage_options``."""
    best: tuple[int, Mapping[str, Any]] = (-1, {})
    for prefix, opts in (storage_options or {}).items():
        if url.startswith(prefix) and len(prefix) > best[0]:
            best = (len(prefix), opts)
    return dict(best[1])


def resolve(
    ref: str,
    storage_options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    output: bool = False,
) -> Location:
    """Resolve a model reference (or, with ``output``, an output URL) into a
    :class:`Location`."""
    url = normalize_ref(ref, output=output)
    guess = ref.strip() if url.startswith("hf://") and "://" not in ref else None
    opts = options_for(url, storage_options)
    try:
        import fsspec  # here, not at import: config and planning need no filesystem

        fs, path = fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError) as exc:
        raise InputError(f"{redact(url)}: cannot open this URL: {redact(str(exc))}") from None
    return Location(fs, path.rstrip("/") or path, url.rstrip("/") or url, guess)


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
