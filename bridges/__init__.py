"""Edges of a node: the I/O loop and its seam, NATS, HTTP, stores, workers, assembly, CLI.

`bridges` itself holds the one place where actor threads and the loop meet
(`IoLoop`, the reply outbox, `PoolClient`); each edge is a subpackage.
"""

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
