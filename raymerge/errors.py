"""User-facing errors.

Everything a user can cause (bad config, bad input files, unreachable storage) raises
:class:`RaymergeError`. The CLI prints its message as one paragraph and exits with code 2,
without a traceback. Internal bugs stay ordinary exceptions so their tracebacks survive.
"""

from __future__ import annotations

from raymerge.redaction import redact_text


class RaymergeError(Exception):
    """An error caused by the user's input; the message says what is wrong and how to fix it.
    The message is redacted here, once for every error (credentials in URLs never show)."""

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        super().__init__(redact_text(str(message)))


class ConfigError(RaymergeError):
    """The merge configuration is invalid. The message lists every problem at once."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = [redact_text(p) for p in problems]
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}")

    def __reduce__(self):  # pickles (to and from Ray workers) with its problems, not its text
        return type(self), (self.problems, self.source)


class InputError(RaymergeError):
    """An input checkpoint is missing, unreadable, corrupt or inconsistent."""


class OutputError(RaymergeError):
    """The output location cannot be used (unwritable, holds another run, ...)."""


class VerifyError(RaymergeError):
    """A finished output does not match its manifest."""


class ClusterError(RaymergeError):
    """The cluster did not answer in time (connecting, starting, a job making no progress):
    an environment problem, not the input's, so exit code 1. ``stuck``: a thread is still
    blocked inside Ray, so the process must exit without waiting for it."""

    exit_code = 1

    def __init__(self, message: str = "", stuck: bool = False) -> None:
        super().__init__(message)
        self.stuck = stuck
