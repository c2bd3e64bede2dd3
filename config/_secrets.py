"""Secrets kept out of what a node shows: health details, logs, error messages."""

from __future__ import annotations

import urllib.parse
from typing import Any, Final

import msgspec

HIDDEN: Final = "***"


def redact_url(url: str) -> str:
    """`url` with the password (or a lone token) of its user part replaced by `***`.

    `nats://alice:s3cret@host:4222` -> `nats://alice:***@host:4222`;
    `nats://t0ken@host` -> `nats://***@host`; a comma-separated list of
    servers (as nats-py takes) is redacted server by server. A URL without
    credentials comes back unchanged.
    """
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return HIDDEN if "@" in url else url
    if "@" not in parts.netloc:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name, colon, _password = user.partition(":")
    shown = f"{name}:{HIDDEN}" if colon else HIDDEN
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


# Settings whose values are secrets themselves (the rest name where secrets are).
_SECRET_KEYS: Final = frozenset({"api_keys", "password", "token"})


def shown(value: Any) -> Any:
    """Settings as plain data fit to print: secrets hidden, URLs' credentials redacted.

    `value` is a settings Struct (or part of one); keys in `_SECRET_KEYS`
    print as `***`, every URL through `redact_url`.
    """
    return _hide(msgspec.to_builtins(value))


def _hide(value: Any, key: str = "") -> Any:
    if key in _SECRET_KEYS and value:
        return [HIDDEN for _ in value] if isinstance(value, list) else HIDDEN
    if isinstance(value, dict):
        return {k: _hide(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value
