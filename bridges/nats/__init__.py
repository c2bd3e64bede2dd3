"""The NATS edge: connection, wire format, serving, outgoing calls, events, embedded server."""

from bridges.nats._bridge import ConnectionState, NatsBridge
from bridges.nats._connect import connect, open_connection
from bridges.nats._embedded import NatsServer, embedded_server, find_nats_server, free_port
from bridges.nats._events import EventRouter, EventStatistics, Outcome
from bridges.nats._host import Host, Observer
from bridges.nats._wire import Subjects

__all__ = [
    "ConnectionState",
    "EventRouter",
    "EventStatistics",
    "Host",
    "NatsBridge",
    "NatsServer",
    "Observer",
    "Outcome",
    "Subjects",
    "connect",
    "embedded_server",
    "find_nats_server",
    "free_port",
    "open_connection",
]
