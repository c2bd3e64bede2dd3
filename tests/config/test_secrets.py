"""Credentials never show: health details, logs, error messages, the printed config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridges.cli._main import main
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


def test_the_config_command_prints_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "node.toml"
    settings.write_text(
        '[http]\nenabled = true\napi_keys = ["super-secret-key"]\n'
        '[state]\nredis_url = "redis://:hunter2@127.0.0.1:6379/0"\n'
        '[nats]\nurl = "nats://alice:s3cret@127.0.0.1:4222"\n'
    )
    assert main(["config", "--config", str(settings)]) == 0
    printed = capsys.readouterr().out
    for secret in ("super-secret-key", "hunter2", "s3cret"):
        assert secret not in printed
    effective = json.loads(printed)
    assert effective["http"]["api_keys"] == ["***"]
    assert effective["state"]["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert effective["nats"]["url"] == "nats://alice:***@127.0.0.1:4222"
