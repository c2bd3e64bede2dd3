"""The NATS bridge as a supervised child, and the embedded server as another."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from tempfile import gettempdir
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from actors import Agent, LocalAgentRef, Runtime
from bridges._embedded import NatsServer, port_answers
from bridges._nats import NatsBridge
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
        wait_for_server(bridge.url, timeout=bridge.settings.connect_timeout)
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
    """Wait until the first server of `url` accepts connections; False if it never does."""
    host, port = host_port(url)
    limit = time.monotonic() + timeout
    while not port_answers(host, port):
        if time.monotonic() >= limit:
            return False
        time.sleep(_POLL)
    return True


def host_port(url: str) -> tuple[str, int]:
    """Host and port of the first server in a NATS URL list."""
    first = url.split(",", maxsplit=1)[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    return parts.hostname or "127.0.0.1", parts.port or _NATS_PORT


def embedded_server(settings: NatsSettings) -> NatsServer | None:
    """The server to embed: None if one answers at the configured URL or embedding is off."""
    if not settings.embed or port_answers(*host_port(settings.url)):
        return None
    store = Path(settings.store_dir or Path(gettempdir()) / "actorfleet-nats")
    return NatsServer(store_dir=store)
