"""What the node holds open on its I/O loop (HTTP, state, audit), as a supervised child."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from actors import Agent, LocalAgentRef, Runtime
from supervisors import ChildHandle, ChildKind, ChildSpec, Restart

if TYPE_CHECKING:
    from bridges._loop import IoLoop

_START_MARGIN: Final = 5.0
_STOP_TIMEOUT: Final = 10.0


class Resource(Protocol):
    """What the child holds: something open on the loop that can describe itself."""

    def describe(self) -> str: ...
    def close(self) -> Coroutine[Any, Any, None]: ...


R = TypeVar("R", bound=Resource)


class ResourceAgent(Agent):
    """Holds an open resource in the supervision tree; its line is the resource's.

    The resource is attached to the runtime when the agent starts and
    detached (`attach(None)`) when it exits by any means; it is then closed
    (in the background after a kill or crash).
    """

    agent_type = "resource"

    def __init__(
        self,
        runtime: Runtime,
        *,
        instance: str | None = None,
        resource: Resource,
        io: IoLoop,
        attach: Callable[[Any], None],
        stop_timeout: float = _STOP_TIMEOUT,
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.resource = resource
        self.io = io
        self._attach = attach
        self._stop_timeout = stop_timeout
        self.exit_link.link(lambda _reason: self._close_later())

    def describe(self) -> str:
        """The resource's own line."""
        return self.resource.describe()

    def on_stop(self) -> None:
        """Stop using the resource, then close it."""
        self._attach(None)
        if self.io.running:
            self.io.run(self.resource.close(), timeout=self._stop_timeout)

    def _close_later(self) -> None:
        self._attach(None)
        if self.io.running:
            self.io.submit(self.resource.close())


def resource_child(
    runtime: Runtime,
    io: IoLoop,
    *,
    id: str,  # noqa: A002 - OTP's name for it
    open_resource: Callable[[], Awaitable[R]],
    attach: Callable[[R | None], None],
    timeout: float,
    shutdown: float,
    stop_timeout: float = _STOP_TIMEOUT,
) -> ChildSpec:
    """A child that opens a resource on the loop, attaches it to the runtime, and holds it.

    `attach(resource)` runs once it is open, `attach(None)` once it is not.
    `stop_timeout` bounds its graceful close.
    """

    def start() -> ChildHandle:
        async def opened() -> R:
            return await open_resource()

        resource = io.run(opened(), timeout=timeout + _START_MARGIN)
        attach(resource)
        handle: LocalAgentRef = ResourceAgent.spawn(
            runtime, instance=id, resource=resource, io=io, attach=attach, stop_timeout=stop_timeout
        )
        return handle

    return ChildSpec(
        id=id, start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )
