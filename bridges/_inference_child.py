"""The inference pool as a supervised child: it lives on the I/O loop, agents reach it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from actors import Agent, LocalAgentRef, Runtime
from inference import InferencePool, PoolClient
from supervisors import ChildHandle, ChildKind, ChildSpec, Restart

if TYPE_CHECKING:
    from bridges._loop import IoLoop


class InferencePoolAgent(Agent):
    """Holds a running `InferencePool` in the supervision tree.

    While it lives, the runtime's `inference` is the pool, so `ctx.generate`
    works; its line in the tree is the pool's tiers, queues and breakers.
    """

    agent_type = "inference-pool"

    def __init__(
        self, runtime: Runtime, *, instance: str | None = None, client: PoolClient
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.client = client
        runtime.inference = client
        self.exit_link.link(lambda _reason: self._detach())

    def describe(self) -> str:
        """Per tier: in flight / slots, queued, breaker."""
        stats = self.client.pool.statistics()
        return "; ".join(
            f"{t.name} ({t.backend} {t.model}) {t.in_flight}/{t.slots} busy, "
            f"{t.queued} queued, breaker {t.breaker}"
            for t in stats.tiers
        )

    def _detach(self) -> None:
        if self.runtime.inference is self.client:
            self.runtime.inference = None
        io = self.client.io
        if io.running:
            io.submit(self.client.pool.aclose())


def inference_pool_child(
    runtime: Runtime, io: IoLoop, make_pool: Callable[[], InferencePool], *, shutdown: float
) -> ChildSpec:
    """A child spec that builds a fresh pool (and backends) on each start."""

    def start() -> ChildHandle:
        client = PoolClient(make_pool(), io)
        handle: LocalAgentRef = InferencePoolAgent.spawn(runtime, instance="0", client=client)
        return handle

    return ChildSpec(
        id="pool", start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )
