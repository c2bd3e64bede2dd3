"""The bridges supervisor's children: embedded server, state, audit, NATS, HTTP."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from actors import ExitLink, ExitListener, ExitReason
from bridges.http._bridge import SHUTDOWN_GRACE, HttpBridge
from bridges.http._health import Health
from bridges.nats._bridge import NatsBridge
from bridges.nats._embedded import (
    LOOPBACK,
    StoreClaim,
    port_answers,
    server_pid,
    wait_exit,
    wait_listening,
    write_server_pid,
)
from bridges.node._holder import resource_child
from bridges.stores import (
    JetStreamAudit,
    is_networked,
    open_store,
)
from messages import ExitKind, Unavailable
from supervisors import ChildKind, ChildSpec, ProcessChild, Restart

if TYPE_CHECKING:
    from actors import Agent
    from bridges.nats._embedded import NatsServer
    from bridges.node._services import NodeServices
    from config import NatsSettings, Settings, StateSettings

logger: Final = logging.getLogger("actorfleet.nats.embedded")

HTTP_START_TIMEOUT: Final = 5.0
STANDBY_POLL: Final = 0.2
"""How often a node that does not own the embedded server tries to take it over (s)."""
# A stopping HTTP bridge lets requests in progress finish (http.drain_timeout;
# its servers drain at once); this bounds what comes on top.
HTTP_STOP_MARGIN: Final = 2 * SHUTDOWN_GRACE
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
    """A child spec for the embedded `nats-server`, shared by the nodes of this host."""
    return ChildSpec(
        id=EMBEDDED_CHILD,
        start=lambda: EmbeddedServerChild(server),
        restart=Restart.PERMANENT,
        shutdown=shutdown,
        kind=ChildKind.PROCESS,
    )


class EmbeddedServerChild:
    """The embedded `nats-server` of this host's nodes, as one node's child.

    One node owns the server at a time (`StoreClaim`): it started it, or
    adopted it from a node that stopped, and supervises it; its exit is this
    child's exit, so the supervisor restarts it. The other nodes stand by:
    every `STANDBY_POLL` seconds they try to take ownership, which succeeds
    once the owner is gone (its lock dies with its process). The new owner
    adopts the server if it still runs (an owner that was SIGKILLed, or that
    stopped while other nodes used it), else starts it on the same port and
    store, so streams, KV buckets and users survive. An owner that stops
    stops the server only when no other node counts itself a member.
    Its start returns once the server listens, as an OTP `init` would.

    Raises:
        Unavailable: If this node must start the server and it does not listen.
    """

    def __init__(self, server: NatsServer) -> None:
        self.exit_link = ExitLink()
        self._server = server
        self._claim = StoreClaim(server.store_dir)
        self._stop = threading.Event()
        self._owning = threading.Lock()
        self._process: ProcessChild | None = None
        self._adopted: int | None = None
        self._claim.join()
        try:
            with self._owning:
                self._try_to_own()
        except Unavailable:
            self._claim.release()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"actorfleet-{EMBEDDED_CHILD}", daemon=True
        )
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The server's process id while this node owns it."""
        if self._process is not None:
            return self._process.pid
        return self._adopted

    @property
    def alive(self) -> bool:
        """Whether the child has not exited."""
        return not self.exit_link.exited

    def link(self, listener: ExitListener) -> None:
        """Call `listener(reason)` when the child exits."""
        self.exit_link.link(listener)

    def shutdown(self, *, timeout: float) -> None:
        """Stop standing by or owning; stop the server if no other node uses it."""
        self._finish(timeout)

    def kill(self) -> None:
        """As `shutdown`, but a server this node stops is killed at once."""
        self._finish(0.0)

    def _try_to_own(self, *, standby: bool = False) -> None:
        """Take ownership if it is free: adopt the running server, or start one."""
        if not self._claim.take():
            return
        store, port = self._server.store_dir, self._server.port
        orphan = server_pid(store)
        if orphan is not None:
            try:
                wait_listening(LOOPBACK, port, alive=lambda: server_pid(store) == orphan)
            except Unavailable:
                os.kill(orphan, signal.SIGKILL)
            else:
                logger.warning(
                    "adopting the embedded nats-server (pid %d) left by a node that stopped",
                    orphan,
                )
                self._adopted = orphan
                return
        if port_answers(LOOPBACK, port):
            # Not a server of this store: nothing of ours to own.
            self._claim.disown()
            return
        child = ProcessChild(self._server.argv(), name=EMBEDDED_CHILD)
        write_server_pid(store, child.pid)
        try:
            wait_listening(LOOPBACK, port, alive=lambda: child.alive)
        except Unavailable:
            child.kill()
            write_server_pid(store, None)
            self._claim.disown()
            raise
        self._process = child
        if standby:
            logger.warning(
                "started the embedded nats-server (pid %d) on port %d in place of one that"
                " stopped with its node",
                child.pid,
                port,
            )

    def _run(self) -> None:
        """Stand by until this node owns the server, then watch the server."""
        while not self._claim.owner:
            if self._stop.wait(STANDBY_POLL):
                return
            try:
                with self._owning:
                    if not self._stop.is_set():
                        self._try_to_own(standby=True)
            except Unavailable as exc:
                self._crash(str(exc))
                return
        while not self._server_exited():
            if self._stop.is_set():
                return
        with self._owning:
            if self._stop.is_set():
                return
            logger.warning("the embedded nats-server (pid %s) exited", self.pid)
            write_server_pid(self._server.store_dir, None)
        self._crash("the embedded nats-server exited")

    def _server_exited(self) -> bool:
        """Whether the owned server has exited, waiting at most `STANDBY_POLL` s."""
        if self._process is not None:
            return self._process.exit_link.wait(timeout=STANDBY_POLL)
        return self._adopted is None or wait_exit(self._adopted, timeout=STANDBY_POLL)

    def _crash(self, why: str) -> None:
        self._claim.release()
        self.exit_link.exit(ExitReason(ExitKind.CRASHED, why))

    def _finish(self, timeout: float) -> None:
        self._stop.set()
        with self._owning:
            pid = self.pid
            if self._claim.owner and pid is not None:
                if self._claim.alone():
                    self._stop_server(pid, timeout)
                else:
                    logger.info(
                        "leaving the embedded nats-server (pid %d) running for the other"
                        " nodes on this host",
                        pid,
                    )
            self._claim.release()
        self.exit_link.exit(ExitReason(ExitKind.SHUTDOWN))

    def _stop_server(self, pid: int, timeout: float) -> None:
        if self._process is not None:
            self._process.shutdown(timeout=timeout)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if timeout else signal.SIGKILL)
            if not wait_exit(pid, timeout=None if math.isinf(timeout) else timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        write_server_pid(self._server.store_dir, None)


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
        journal = services.metrics.journal
        bridge.events.add_publish_listener(journal.published)
        bridge.events.add_listener(journal.settled)
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
        shutdown=settings.supervision.shutdown_timeout + settings.http.drain_timeout,
        stop_timeout=settings.http.drain_timeout + HTTP_STOP_MARGIN,
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
