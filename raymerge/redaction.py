"""The one redaction function: secrets never reach a message, a log line or an output file.

Secrets can hide in three places: values of secret-looking keys in mappings (``storage_options``:
``secret``, ``token``, ``password``, ...), the user-info part of URLs (``http://user:pw@host``)
and query strings of signed URLs (``?X-Amz-Signature=...``). :func:`redact` handles all three for
any nesting of mappings, lists and strings; every user-visible text (errors, progress and retry
lines, the summary, the manifest, the model card) goes through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(
    r"(secret|token|password|passwd|credential|session|signature|api[_-]?key|^key$|_key$|^key_)",
    re.I,
)
# scheme://user[:password]@host  ->  scheme://***@host (a user name can be a key id too)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<info>[^/@\s]+)@")
# ?name=value / &name=value of secret-looking names (signed URLs, tokens in query strings)
_QUERY = re.compile(r"(?P<lead>[?&;](?P<name>[^=&#\s]+)=)(?P<value>[^&#\s]*)")


def redact_text(text: str) -> str:
    """``text`` with URL user-info and secret query values masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY.sub(
        lambda m: f"{m['lead']}{MASK}" if _SECRET_KEY.search(m["name"]) else m.group(0), text
    )


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with every secret masked (see the module docstring). Strings are
    scanned for URLs; mapping values under secret-looking keys are replaced by ``"***"``."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {
            k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return obj


__all__ = ["MASK", "redact", "redact_text"]
