"""What to do when a job or statistics task fails: a small policy, testable without a cluster.

Ray's own task retries are off; the executor resubmits failed work itself so it can count the
retries for the summary and the manifest. Worker or node loss, lost objects and storage errors
are retried up to ``max_attempts``; user errors (:class:`RaymergeError`: NaN inputs, an input
changed since planning, a full disk) fail the run at once, since a retry would fail the same way.
"""

from __future__ import annotations

from enum import Enum

from raymerge.errors import RaymergeError


class Decision(Enum):
    FAIL = "fail"  # a user error: stop the run, report it as it is
    RETRY = "retry"  # resubmit (a fresh attempt reads storage again)
    GIVE_UP = "give_up"  # attempts exhausted: stop the run


def user_error(exc: BaseException) -> RaymergeError | None:
    """The user error behind ``exc`` (Ray wraps task exceptions: the cause is the original)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RaymergeError):
        return cause
    return exc if isinstance(exc, RaymergeError) else None


def decide(exc: BaseException, attempt: int, max_attempts: int) -> Decision:
    """The decision for work that failed with ``exc`` on attempt ``attempt`` (1-based)."""
    if user_error(exc) is not None:
        return Decision.FAIL
    if attempt >= max_attempts:
        return Decision.GIVE_UP
    return Decision.RETRY


__all__ = ["Decision", "decide", "user_error"]
