"""Edges of a node: the I/O loop and its seam, NATS, HTTP, stores, workers, assembly, CLI.

`bridges` itself holds the one place where actor threads and the loop meet
(`IoLoop`, the reply outbox, `PoolClient`); each edge is a subpackage.
Names are imported on first use, so `actorfleet --help` or `send` does not
load every edge (nats-py, Litestar, uvicorn) it never touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from bridges._held import Held, Resources
    from bridges._loop import IoLoop
    from bridges._seam import Cancelled, PoolClient, Stream
    from bridges.cli import main
    from bridges.nats import (
        ConnectionState,
        EventRouter,
        EventStatistics,
        NatsBridge,
        NatsServer,
        Outcome,
        Subjects,
        embedded_server,
        find_nats_server,
        free_port,
    )
    from bridges.node import NodeServices, build_node, build_runtime, import_agent

_HOMES: Final = {
    "Held": "bridges._held",
    "Resources": "bridges._held",
    "IoLoop": "bridges._loop",
    "Cancelled": "bridges._seam",
    "PoolClient": "bridges._seam",
    "Stream": "bridges._seam",
    "main": "bridges.cli",
    "ConnectionState": "bridges.nats",
    "EventRouter": "bridges.nats",
    "EventStatistics": "bridges.nats",
    "NatsBridge": "bridges.nats",
    "NatsServer": "bridges.nats",
    "Outcome": "bridges.nats",
    "Subjects": "bridges.nats",
    "embedded_server": "bridges.nats",
    "find_nats_server": "bridges.nats",
    "free_port": "bridges.nats",
    "NodeServices": "bridges.node",
    "build_node": "bridges.node",
    "build_runtime": "bridges.node",
    "import_agent": "bridges.node",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module 'bridges' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "Cancelled",
    "ConnectionState",
    "EventRouter",
    "EventStatistics",
    "Held",
    "IoLoop",
    "NatsBridge",
    "NatsServer",
    "NodeServices",
    "Outcome",
    "PoolClient",
    "Resources",
    "Stream",
    "Subjects",
    "build_node",
    "build_runtime",
    "embedded_server",
    "find_nats_server",
    "free_port",
    "import_agent",
    "main",
]
