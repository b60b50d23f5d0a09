"""One redaction function for every message: a secret in any position never shows."""

from __future__ import annotations

import pytest

from raymerge.errors import InputError
from raymerge.redaction import redact, redact_text

SECRET = "s3cr3t-DO-NOT-LOG-91f2"


@pytest.mark.parametrize(
    "text",
    [
        f"http://user:{SECRET}@host/models/a",
        f"s3://AKIAKEY:{SECRET}@bucket/key",
        f"https://{SECRET}@host/x",
        f"https://host/x?X-Amz-Signature={SECRET}&a=1",
        f"https://host/x?token={SECRET}",
        f"see https://host/x?a=1&api_key={SECRET} and more",
        f"error at http://u:{SECRET}@h:9000/path: not found",
    ],
)
def test_secrets_in_urls_are_masked(text):
    assert SECRET not in redact_text(text)
    assert SECRET not in redact({"where": [text, (text,)]})["where"][0]


def test_secret_keys_in_mappings_are_masked_and_others_kept():
    opts = {
        "s3://b": {
            "key": "AKIA",
            "secret": SECRET,
            "token": SECRET,
            "client_kwargs": {"aws_session_token": SECRET, "region_name": "us-east-1"},
            "endpoint_url": "http://127.0.0.1:9000",
        }
    }
    shown = redact(opts)
    assert SECRET not in repr(shown) and "AKIA" not in repr(shown)
    assert shown["s3://b"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert shown["s3://b"]["client_kwargs"]["region_name"] == "us-east-1"


def test_every_user_error_is_redacted_where_it_is_made():
    err = InputError(f"http://me:{SECRET}@host/m: model folder not found")
    assert SECRET not in str(err) and "http://***@host/m" in str(err)
