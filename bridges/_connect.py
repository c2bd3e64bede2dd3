"""One way to open a NATS connection for the node's helpers (state, audit, workers)."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import nats
import nats.errors

from messages import Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client

    from config import NatsSettings


async def open_connection(url: str, *, name: str, settings: NatsSettings) -> Client:
    """Connect to `url` (comma-separated for a cluster), reconnecting forever after.

    Raises:
        Unavailable: If no server answers within `settings.connect_timeout`.
    """
    connect = nats.connect(
        url.split(","),
        name=name,
        reconnect_time_wait=settings.reconnect_wait,
        max_reconnect_attempts=-1,
        connect_timeout=max(1, math.ceil(settings.connect_timeout)),
    )
    try:
        # With reconnects allowed nats-py retries the first connect forever.
        return await asyncio.wait_for(connect, settings.connect_timeout)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        msg = f"cannot connect to NATS at {url}: {str(exc) or type(exc).__name__}"
        raise Unavailable(msg) from exc


def supports_message_ttl(nc: Client) -> bool:
    """Whether the connected server honours per-message TTLs (nats-server 2.11+)."""
    version = nc.connected_server_version
    return (version.major, version.minor) >= (2, 11)
