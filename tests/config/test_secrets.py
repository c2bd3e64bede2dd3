"""Credentials in URLs never show: health details, logs, error messages."""

from __future__ import annotations

import pytest

from config import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@10.0.0.1:4222", "nats://alice:***@10.0.0.1:4222"),
        ("nats://t0ken@nats.internal", "nats://***@nats.internal"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:p%40ss@cache:6380", "rediss://user:***@cache:6380"),
        ("tls://a:b@h1:4222,tls://c:d@h2:4222", "tls://a:***@h1:4222,tls://c:***@h2:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_a_urls_password_or_token_is_replaced_and_nothing_else(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    for secret in ("s3cret", "t0ken", "hunter2", "p%40ss", ":b@", ":d@"):
        assert secret not in redact_url(url)
