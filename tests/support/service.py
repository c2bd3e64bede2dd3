"""A support-service node for tests: the embedded defaults on a test NATS (and Redis)."""

from __future__ import annotations

import tomllib
import uuid
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
from nats.js.api import DeliverPolicy

import config
from actors.support import Destination, OrderCreated
from bridges._loop import run_async
from config import Settings
from messages import decode

T = TypeVar("T")


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


async def _stored(url: str, subject: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        found = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return found
            found.append(msg.data)
            if msg.metadata.num_pending == 0:
                return found
    finally:
        await nc.close()


def stored(url: str, subject: str, message_type: type[T]) -> list[T]:
    """Every message stored on a JetStream subject now, decoded."""
    return [decode(data, message_type) for data in run_async(_stored(url, subject))]


def order_created_fields() -> dict[str, Any]:
    """A valid `OrderCreated` as plain fields, for tests to spoil one of them."""
    event = OrderCreated(
        order_id="O-1",
        customer_id="acme",
        total_usd=10.0,
        weight_kg=1.0,
        destination=Destination(country="DE"),
    )
    fields: dict[str, Any] = msgspec.to_builtins(event)
    return fields
