"""What a node's edges share, typed: the node hands each edge the parts it uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridges._held import Held, Resources
from bridges._seam import PoolClient
from bridges.nats._bridge import NatsBridge
from bridges.stores import AsyncStore, JetStreamAudit, LoopAudit, LoopStore

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

    from actors import Runtime
    from bridges._loop import IoLoop
    from bridges.http._metrics import Metrics
    from supervisors import SupervisorStatistics


@dataclass(frozen=True, kw_only=True)
class NodeServices:
    """The services of one node, each by its own type.

    Attributes:
        runtime: What the node's agents share. Its ports (inference, state,
            audit) are set here; the NATS bridge is its transport while connected.
        io: The I/O loop every edge runs on.
        metrics: The node's metrics (HTTP, NATS and tool outcomes).
        tree: Reads the live supervision tree (blocks: run off the loop).
        nats: The NATS bridge while one is connected.
        pool: The inference pool while it runs.
        resources: What the node holds open, by child id (readiness).
        metrics_reader: The OpenTelemetry reader, with `[telemetry] metrics = "memory"`.
    """

    runtime: Runtime
    io: IoLoop
    metrics: Metrics
    tree: Callable[[], SupervisorStatistics]
    nats: Held[NatsBridge] = field(default_factory=lambda: Held("the NATS bridge"))
    pool: Held[PoolClient] = field(default_factory=lambda: Held("the inference pool"))
    resources: Resources = field(default_factory=Resources)
    metrics_reader: MetricReader | None = None

    def attach_pool(self, client: PoolClient) -> Callable[[], None]:
        """Make `client` the pool agents generate with; return what detaches it."""
        release = self.pool.hold(client)
        detach_port = self._set_port("inference", client)

        def detach() -> None:
            detach_port()
            release()

        return detach

    def attach_nats(self, bridge: NatsBridge) -> Callable[[], None]:
        """Hold `bridge` (it is the runtime's transport while connected); return the detach."""
        return self.nats.hold(bridge)

    def attach_state(self, store: AsyncStore, *, timeout: float) -> Callable[[], None]:
        """Make `store` the agents' state (`ctx.state`); return what detaches it."""
        return self._set_port("state", LoopStore(self.io, store, timeout=timeout))

    def attach_audit(self, log: JetStreamAudit, *, timeout: float) -> Callable[[], None]:
        """Make `log` the audit log of generations; return what detaches it."""
        return self._set_port("audit", LoopAudit(self.io, log, timeout=timeout))

    def _set_port(self, name: str, port: object) -> Callable[[], None]:
        """Set one of the runtime's ports; the detach clears it unless replaced since."""
        setattr(self.runtime, name, port)

        def detach() -> None:
            if getattr(self.runtime, name) is port:
                setattr(self.runtime, name, None)

        return detach
