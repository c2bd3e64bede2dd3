"""What the node holds open on its I/O loop, each as a supervised child.

The NATS bridge, the HTTP servers, the state store, the audit log and the
inference pool are all held the same way: a child opens the resource on the
loop, attaches it (to the runtime and the node's typed slots), and an agent
holds it in the supervision tree, its line the resource's own. A resource
lost for good crashes its agent, so the supervisor opens a new one; the
node's `Resources` say which are open now and, probed, whether each can
serve (readiness).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

from actors import Agent, LocalAgentRef, Runtime
from bridges._held import Resource
from supervisors import ChildHandle, ChildKind, ChildSpec, Restart

if TYPE_CHECKING:
    from bridges._held import Resources
    from bridges._loop import IoLoop

_START_MARGIN: Final = 5.0
_STOP_TIMEOUT: Final = 10.0


R = TypeVar("R", bound=Resource)


Detach = Callable[[], None]


class ResourceAgent(Agent):
    """Holds an open resource in the supervision tree; its line is the resource's.

    The resource was attached (to the runtime, the node's slots) before the
    agent started; it is detached when the agent exits by any means, then
    closed (in the background after a kill or crash). A resource lost for
    good crashes the agent.
    """

    agent_type = "resource"

    def __init__(
        self,
        runtime: Runtime,
        *,
        instance: str | None = None,
        resource: Resource,
        io: IoLoop,
        detach: Detach,
        stop_timeout: float = _STOP_TIMEOUT,
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.resource = resource
        self.io = io
        self._detach = detach
        self._stop_timeout = stop_timeout
        self._closing = False
        self._close_lock = threading.Lock()
        self.exit_link.link(lambda _reason: self._close_later())

    def on_start(self) -> None:
        """Crash (to be restarted with a new resource) once this one is lost for good."""
        self.io.call_soon(self.resource.on_lost, self.fail)

    def describe(self) -> str:
        """The resource's own line."""
        return self.resource.describe()

    def on_stop(self) -> None:
        """Stop using the resource, then close it."""
        if self._claim_close():
            self._detach()
            if self.io.running:
                self.io.run(self.resource.close(), timeout=self._stop_timeout)

    def _close_later(self) -> None:
        if self._claim_close():
            self._detach()
            if self.io.running:
                self.io.submit(self.resource.close())

    def _claim_close(self) -> bool:
        """True for the first caller only: detached and closed once, by a stop or an exit."""
        with self._close_lock:
            closing, self._closing = self._closing, True
        return not closing


def resource_child(
    runtime: Runtime,
    io: IoLoop,
    *,
    id: str,  # noqa: A002 - OTP's name for it
    open_resource: Callable[[], Awaitable[R]],
    attach: Callable[[R], Detach] | None = None,
    timeout: float,
    shutdown: float,
    stop_timeout: float = _STOP_TIMEOUT,
    resources: Resources | None = None,
) -> ChildSpec:
    """A child that opens a resource on the loop, attaches it, and holds it.

    `attach(resource)` runs once it is open and returns what detaches it,
    which runs once the holder exits; `resources` (if given) tracks it under
    `id` the same way. `stop_timeout` bounds its graceful close.
    """

    def attach_and_hold(resource: R) -> Detach:
        undo = [] if attach is None else [attach(resource)]
        if resources is not None:
            undo.append(resources.hold(id, resource))

        def detach() -> None:
            for step in reversed(undo):
                step()

        return detach

    def start() -> ChildHandle:
        async def opened() -> R:
            return await open_resource()

        resource = io.run(opened(), timeout=timeout + _START_MARGIN)
        detach = attach_and_hold(resource)
        try:
            handle: LocalAgentRef = ResourceAgent.spawn(
                runtime,
                instance=id,
                resource=resource,
                io=io,
                detach=detach,
                stop_timeout=stop_timeout,
            )
        except BaseException:
            detach()
            io.submit(resource.close())
            raise
        return handle

    return ChildSpec(
        id=id, start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )
