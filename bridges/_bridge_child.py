"""The NATS bridge as a supervised child, and the embedded server as another."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import gettempdir
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from actors import Agent, LocalAgentRef, Runtime
from bridges._embedded import LOOPBACK, NatsServer, port_answers
from bridges._nats import NatsBridge
from messages import Unavailable
from supervisors import ChildHandle, ChildKind, ChildSpec, ProcessChild, Restart

if TYPE_CHECKING:
    from config import NatsSettings

_START_MARGIN: Final = 5.0
_NATS_PORT: Final = 4222
_POLL: Final = 0.01


class NatsBridgeAgent(Agent):
    """Holds a started `NatsBridge` in the supervision tree.

    Its line in the tree is the connection's state. When the connection is
    given up for good, the agent crashes, so its supervisor starts a new
    bridge (a fresh connection). A graceful stop drains the connection
    before the agent exits; a kill or crash closes it in the background.
    """

    agent_type = "nats-bridge"

    def __init__(
        self, runtime: Runtime, *, instance: str | None = None, bridge: NatsBridge
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.bridge = bridge
        bridge.on_closed(lambda: self.fail("the NATS connection was closed"))
        self.exit_link.link(lambda _reason: self._close_later())

    def describe(self) -> str:
        """The connection's state, URL and reconnect count."""
        return self.bridge.describe()

    def on_stop(self) -> None:
        """Drain the connection before the agent exits."""
        io = self.bridge.io
        if io.running:
            io.run(self.bridge.close(), timeout=self.bridge.settings.drain_timeout + _START_MARGIN)

    def _close_later(self) -> None:
        if self.bridge.io.running:
            self.bridge.io.submit(self.bridge.close())


def nats_bridge_child(make_bridge: Callable[[], NatsBridge], *, shutdown: float) -> ChildSpec:
    """A child spec that connects a new bridge each start, and closes it when stopped.

    The start waits for the server (the embedded one may still be starting)
    and the first connection, bounded by `nats.connect_timeout`; a failure
    is a failed start, as in OTP.
    """

    def start() -> ChildHandle:
        bridge = make_bridge()
        if not wait_for_server(bridge.url, timeout=bridge.settings.connect_timeout):
            msg = f"no NATS server answers at {bridge.url}"
            raise Unavailable(msg)
        bridge.io.run(bridge.start(), timeout=bridge.settings.connect_timeout + _START_MARGIN)
        handle: LocalAgentRef = NatsBridgeAgent.spawn(bridge.runtime, instance="0", bridge=bridge)
        return handle

    return ChildSpec(
        id="nats", start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )


def embedded_server_child(server: NatsServer, *, shutdown: float) -> ChildSpec:
    """A child spec that runs the embedded `nats-server` as a supervised OS process."""

    def start() -> ChildHandle:
        return ProcessChild(server.argv(), name="nats-server")

    return ChildSpec(
        id="nats-server",
        start=start,
        restart=Restart.PERMANENT,
        shutdown=shutdown,
        kind=ChildKind.PROCESS,
    )


def wait_for_server(url: str, *, timeout: float) -> bool:
    """Wait until a server of the `url` list accepts connections; False if none does."""
    servers = host_ports(url)
    limit = time.monotonic() + timeout
    while not any(port_answers(host, port) for host, port in servers):
        if time.monotonic() >= limit:
            return False
        time.sleep(_POLL)
    return True


def host_ports(url: str) -> list[tuple[str, int]]:
    """Host and port of each server in a comma-separated NATS URL list."""
    found = []
    for item in url.split(","):
        text = item.strip()
        parts = urlsplit(text if "://" in text else f"nats://{text}")
        found.append((parts.hostname or LOOPBACK, parts.port or _NATS_PORT))
    return found


def embedded_server(settings: NatsSettings) -> NatsServer | None:
    """The server to embed, or None.

    None if embedding is off, if any server of the URL list answers, or if
    the URL is not one loopback address: a node must not start a private
    broker in place of a remote or clustered one that is down (it would cut
    itself off). The embedded server listens on the URL's own port, so other
    nodes on this host find it, and keeps its JetStream data in
    `nats.store_dir` (default `<temp dir>/actorfleet-nats-<port>`).
    """
    servers = host_ports(settings.url)
    if not settings.embed or any(port_answers(host, port) for host, port in servers):
        return None
    [(host, port), *others] = servers
    if others or not _is_loopback(host):
        return None
    store = Path(settings.store_dir or Path(gettempdir()) / f"actorfleet-nats-{port}")
    return NatsServer(port=port, store_dir=store)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False
