"""What the node holds open on its I/O loop (HTTP, state, audit), as a supervised child.

A resource whose connection is closed for good crashes its child, so the
supervisor opens a new one; the node's `Resources` say which are open now
and, probed, whether each can serve (readiness).
"""

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
    """What the child holds: something open on the loop that can describe itself.

    `probe()` says why it cannot serve now, None if it can; `on_lost(callback)`
    calls back once it is lost for good. Both are called on the loop.
    """

    def describe(self) -> str: ...
    def close(self) -> Coroutine[Any, Any, None]: ...
    def probe(self) -> Coroutine[Any, Any, str | None]: ...
    def on_lost(self, callback: Callable[[str], None]) -> None: ...


class Resources:
    """The resources a node holds open now, by child id (for readiness)."""

    def __init__(self) -> None:
        self._held: dict[str, Resource] = {}

    def hold(self, id_: str, resource: Resource | None) -> None:
        """Record that `resource` is open under `id_` (None: no longer)."""
        if resource is None:
            self._held.pop(id_, None)
        else:
            self._held[id_] = resource

    async def problem(self, id_: str) -> str | None:
        """Why the resource `id_` cannot serve now (not open, or its probe), or None."""
        resource = self._held.get(id_)
        if resource is None:
            return f"{id_} is not open"
        return await resource.probe()


R = TypeVar("R", bound=Resource)


class ResourceAgent(Agent):
    """Holds an open resource in the supervision tree; its line is the resource's.

    The resource is attached to the runtime when the agent starts and
    detached (`attach(None)`) when it exits by any means; it is then closed
    (in the background after a kill or crash). A resource lost for good
    crashes the agent.
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

    def on_start(self) -> None:
        """Crash (to be restarted with a new resource) once this one is lost for good."""
        self.io.call_soon(self.resource.on_lost, self.fail)

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
    resources: Resources | None = None,
) -> ChildSpec:
    """A child that opens a resource on the loop, attaches it to the runtime, and holds it.

    `attach(resource)` runs once it is open, `attach(None)` once it is not;
    `resources` (if given) tracks it under `id` the same way. `stop_timeout`
    bounds its graceful close.
    """

    def attach_and_hold(resource: R | None) -> None:
        attach(resource)
        if resources is not None:
            resources.hold(id, resource)

    def start() -> ChildHandle:
        async def opened() -> R:
            return await open_resource()

        resource = io.run(opened(), timeout=timeout + _START_MARGIN)
        attach_and_hold(resource)
        handle: LocalAgentRef = ResourceAgent.spawn(
            runtime,
            instance=id,
            resource=resource,
            io=io,
            attach=attach_and_hold,
            stop_timeout=stop_timeout,
        )
        return handle

    return ChildSpec(
        id=id, start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )
