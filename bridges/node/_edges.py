"""The bridges supervisor's children: embedded server, state, audit, NATS, HTTP."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from bridges.http._bridge import SHUTDOWN_GRACE, HttpBridge
from bridges.http._health import Health
from bridges.nats._bridge import NatsBridge
from bridges.nats._embedded import LOOPBACK, wait_listening
from bridges.node._holder import resource_child
from bridges.stores import (
    JetStreamAudit,
    is_networked,
    open_store,
)
from messages import Unavailable
from supervisors import ChildHandle, ChildKind, ChildSpec, ProcessChild, Restart

if TYPE_CHECKING:
    from actors import Agent
    from bridges.nats._embedded import NatsServer
    from bridges.node._services import NodeServices
    from config import NatsSettings, Settings, StateSettings

HTTP_START_TIMEOUT: Final = 5.0
# A stopping HTTP bridge lets requests in progress finish, per server.
HTTP_STOP_TIMEOUT: Final = 4 * SHUTDOWN_GRACE
# A graceful stop of the NATS bridge drains; this bounds what comes on top.
_DRAIN_MARGIN: Final = 5.0


@dataclass(frozen=True)
class _StoreWhere:
    """Where the state store is reached (`bridges.stores.Where`)."""

    state: StateSettings
    nats: NatsSettings
    url: str
    client_name: str


EMBEDDED_CHILD: Final = "nats-server"
"""The embedded server's child id in the tree."""


def edge_children(
    settings: Settings,
    services: NodeServices,
    agents: list[type[Agent]],
    *,
    server: NatsServer | None,
    url: str,
    exposed: list[type[Agent]],
) -> list[ChildSpec]:
    """The embedded server (if any), then state and audit, then NATS, then HTTP.

    State and audit come before the NATS bridge: requests it takes in may
    use them. Shutdown runs in reverse, so HTTP and NATS stop taking
    requests before the stores close.
    """
    shutdown = settings.supervision.shutdown_timeout
    children = []
    if server is not None:
        children.append(embedded_server_child(server, shutdown=shutdown))
    children.extend(_state_children(settings, services, url))
    if settings.nats.enabled:
        children.append(_nats_child(settings, services, agents, url))
    if settings.http.enabled:
        children.append(_http_child(settings, services, exposed))
    return children


def embedded_server_child(server: NatsServer, *, shutdown: float) -> ChildSpec:
    """A child spec that runs the embedded `nats-server` as a supervised OS process."""

    def start() -> ChildHandle:
        child = ProcessChild(server.argv(), name=EMBEDDED_CHILD)
        try:
            wait_listening(LOOPBACK, server.port, alive=lambda: child.alive)
        except Unavailable:
            child.kill()
            raise
        return child

    return ChildSpec(
        id=EMBEDDED_CHILD,
        start=start,
        restart=Restart.PERMANENT,
        shutdown=shutdown,
        kind=ChildKind.PROCESS,
    )


def _nats_child(
    settings: Settings, services: NodeServices, agents: list[type[Agent]], url: str
) -> ChildSpec:
    """A new bridge (a fresh connection) each start, drained when stopped.

    The embedded server's child started before it returns only once the
    server listens. The first connection is retried as the reconnect
    settings say (`nats.reconnect_wait`, `nats.max_reconnect_attempts`),
    bounded by `nats.connect_timeout`; a failure is a failed start, as in OTP.
    """
    nats = settings.nats

    async def open_bridge() -> NatsBridge:
        bridge = NatsBridge(
            services.runtime,
            services.io,
            nats,
            settings.events,
            agents,
            url=url,
            metrics=services.metrics,
        )
        await bridge.start()
        return bridge

    return resource_child(
        services.runtime,
        services.io,
        id="nats",
        open_resource=open_bridge,
        attach=services.attach_nats,
        timeout=nats.connect_timeout,
        shutdown=settings.supervision.shutdown_timeout + nats.drain_timeout,
        stop_timeout=nats.drain_timeout + _DRAIN_MARGIN,
    )


def _http_child(
    settings: Settings, services: NodeServices, exposed: list[type[Agent]]
) -> ChildSpec:
    health = Health(
        services.runtime.node,
        services.tree,
        needs_inference=bool(settings.inference.tiers),
        needs_nats=settings.nats.enabled,
        nats=services.nats,
        pool=services.pool,
        resources=services.resources,
        required=required_resources(settings),
    )

    async def open_http() -> HttpBridge:
        bridge = HttpBridge(
            services.runtime,
            settings.http,
            exposed,
            health=health,
            metrics=services.metrics,
            pool=services.pool,
        )
        await bridge.start()
        return bridge

    return resource_child(
        services.runtime,
        services.io,
        id="http",
        open_resource=open_http,
        timeout=HTTP_START_TIMEOUT,
        shutdown=settings.supervision.shutdown_timeout,
        stop_timeout=HTTP_STOP_TIMEOUT,
    )


def required_resources(settings: Settings) -> list[tuple[str, str]]:
    """The resources a node is not ready without: (child id, health check name)."""
    required = []
    if is_networked(settings.state.backend):
        required.append(("state", "state:store"))
    if settings.state.audit_stream:
        required.append(("audit", "audit:log"))
    return required


def _state_children(settings: Settings, services: NodeServices, url: str) -> list[ChildSpec]:
    """The networked state store and the audit log, each holding its connection."""
    state, nats = settings.state, settings.nats
    runtime, io = services.runtime, services.io
    timeout = state.timeout + nats.connect_timeout
    shutdown = settings.supervision.shutdown_timeout
    children = []
    if is_networked(state.backend):
        where = _StoreWhere(state, nats, url, f"{runtime.node}-state")

        children.append(
            resource_child(
                runtime,
                io,
                id="state",
                open_resource=lambda: open_store(where),
                attach=functools.partial(services.attach_state, timeout=state.timeout),
                timeout=timeout,
                shutdown=shutdown,
                resources=services.resources,
            )
        )
    if state.audit_stream:

        async def open_audit() -> JetStreamAudit:
            return await JetStreamAudit.open(url, state, nats, name=f"{runtime.node}-audit")

        children.append(
            resource_child(
                runtime,
                io,
                id="audit",
                open_resource=open_audit,
                attach=functools.partial(services.attach_audit, timeout=state.timeout),
                timeout=timeout,
                shutdown=shutdown,
                resources=services.resources,
            )
        )
    return children
