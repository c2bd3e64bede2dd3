"""The HTTP bridge as a supervised child: its servers run on the node's I/O loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from actors import Agent, LocalAgentRef, Runtime
from supervisors import ChildHandle, ChildKind, ChildSpec, Restart

if TYPE_CHECKING:
    from bridges._http import HttpBridge
    from bridges._loop import IoLoop

_START_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 15.0


class HttpBridgeAgent(Agent):
    """Holds a serving `HttpBridge` in the supervision tree.

    Its line in the tree is where it listens. A graceful stop lets requests
    in progress finish (bounded) before the agent exits; a kill or crash
    closes the servers in the background.
    """

    agent_type = "http-bridge"

    def __init__(
        self, runtime: Runtime, *, instance: str | None = None, bridge: HttpBridge, io: IoLoop
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.bridge = bridge
        self.io = io
        self.exit_link.link(lambda _reason: self._close_later())

    def describe(self) -> str:
        """Where the API and the health endpoints listen."""
        return self.bridge.describe()

    def on_stop(self) -> None:
        """Stop the servers before the agent exits."""
        if self.io.running:
            self.io.run(self.bridge.close(), timeout=_STOP_TIMEOUT)

    def _close_later(self) -> None:
        if self.io.running:
            self.io.submit(self.bridge.close())


def http_bridge_child(
    runtime: Runtime, io: IoLoop, make_bridge: Callable[[], HttpBridge], *, shutdown: float
) -> ChildSpec:
    """A child spec that binds and serves a new `HttpBridge` on each start."""

    def start() -> ChildHandle:
        bridge = make_bridge()
        io.run(bridge.start(), timeout=_START_TIMEOUT)
        handle: LocalAgentRef = HttpBridgeAgent.spawn(runtime, instance="0", bridge=bridge, io=io)
        return handle

    return ChildSpec(
        id="http", start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )
