"""A connection the node's agents use (state store, audit log) as a supervised child."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

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


class ResourceAgent(Agent):
    """Holds an open resource in the supervision tree; its line is the resource's.

    `attach` runs when the agent starts (the runtime starts using the
    resource) and `detach` when it exits by any means; the resource is then
    closed (in the background after a kill or crash).
    """

    agent_type = "resource"

    def __init__(
        self,
        runtime: Runtime,
        *,
        instance: str | None = None,
        resource: Resource,
        io: IoLoop,
        detach: Callable[[], None],
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.resource = resource
        self.io = io
        self._detach = detach
        self.exit_link.link(lambda _reason: self._close_later())

    def describe(self) -> str:
        """The resource's own line."""
        return self.resource.describe()

    def on_stop(self) -> None:
        """Stop using the resource, then close it."""
        self._detach()
        if self.io.running:
            self.io.run(self.resource.close(), timeout=_STOP_TIMEOUT)

    def _close_later(self) -> None:
        self._detach()
        if self.io.running:
            self.io.submit(self.resource.close())


def resource_child(
    runtime: Runtime,
    io: IoLoop,
    *,
    id: str,  # noqa: A002 - OTP's name for it
    open_resource: Callable[[], Awaitable[Resource]],
    attach: Callable[[Resource], None],
    detach: Callable[[], None],
    timeout: float,
    shutdown: float,
) -> ChildSpec:
    """A child that opens a resource on the loop, hands it to the runtime, and holds it."""

    def start() -> ChildHandle:
        async def opened() -> Resource:
            return await open_resource()

        resource = io.run(opened(), timeout=timeout + _START_MARGIN)
        attach(resource)
        handle: LocalAgentRef = ResourceAgent.spawn(
            runtime, instance=id, resource=resource, io=io, detach=detach
        )
        return handle

    return ChildSpec(
        id=id, start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )
