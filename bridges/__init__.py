"""Edges of a node: the I/O loop, NATS, node assembly and the command line."""

from bridges._app import build_node, build_runtime, import_agent
from bridges._bridge_child import NatsBridgeAgent, embedded_server, nats_bridge_child
from bridges._cli import main
from bridges._embedded import NatsServer, find_nats_server, free_port
from bridges._events import EventRouter, EventStatistics, Outcome
from bridges._loop import IoLoop
from bridges._nats import ConnectionState, NatsBridge
from bridges._wire import Subjects

__all__ = [
    "ConnectionState",
    "EventRouter",
    "EventStatistics",
    "IoLoop",
    "NatsBridge",
    "NatsBridgeAgent",
    "NatsServer",
    "Outcome",
    "Subjects",
    "build_node",
    "build_runtime",
    "embedded_server",
    "find_nats_server",
    "free_port",
    "import_agent",
    "main",
    "nats_bridge_child",
]
