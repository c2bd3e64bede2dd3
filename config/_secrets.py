"""Secrets kept out of what a node shows: health details, logs, error messages."""

from __future__ import annotations

import urllib.parse
from typing import Final

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
