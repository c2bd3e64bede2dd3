"""What a bridge's request endpoints and event router need of the bridge."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nats.aio.client import Client

    from actors import Runtime
    from bridges._outbox import Outbox
    from bridges.nats._wire import Subjects

Recorder = Callable[[str, float], None]


class Observer(Protocol):
    """Where request outcomes are counted (the node's metrics)."""

    def recorder(self, edge: str, agent_type: str) -> Recorder:
        """A function recording `(status, seconds)` of one request to `agent_type`."""
        ...


class Host(Protocol):
    """The bridge, as an endpoint or the event router sees it (all on the loop)."""

    @property
    def runtime(self) -> Runtime:
        """The node's runtime: its agents, directory and timers."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Where actor threads hand replies to the loop."""
        ...

    @property
    def subjects(self) -> Subjects:
        """The subject names under the configured prefix."""
        ...

    @property
    def metrics(self) -> Observer | None:
        """Where outcomes are counted, if anywhere."""
        ...

    @property
    def nc(self) -> Client:
        """The live connection (raises `Unavailable` when there is none)."""
        ...

    @property
    def serving(self) -> bool:
        """Whether the bridge serves agents now (connected, not closing)."""
        ...

    @property
    def max_payload(self) -> int:
        """The server's largest accepted message, headers included."""
        ...

    def track(self, delta: int) -> None:
        """Count work that must finish before a graceful close."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task the bridge holds (and cancels on close)."""
        ...

    async def send(self, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        """Publish on the live connection."""
        ...
