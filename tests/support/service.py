"""A support-service node for tests: the embedded defaults on a test NATS (and Redis)."""

from __future__ import annotations

import tomllib
import uuid
from typing import Any

import config
from config import Settings


def support_settings(
    nats_url: str, *, state: dict[str, Any] | None = None, **sections: Any
) -> Settings:
    """`config/default.toml`, pointed at `nats_url`, HTTP on a free port, no simulated delays."""
    raw = tomllib.loads(config.default_toml())
    raw["node"]["name"] = f"support-{uuid.uuid4().hex[:6]}"
    raw["nats"].update(url=nats_url, embed=False)
    raw["http"]["port"] = 0
    raw["state"].update(state or {})
    for tier in raw["inference"]["tiers"]:
        tier["backend"].update(token_delay=0.0, prefill_delay=0.0)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config.decode(raw)
