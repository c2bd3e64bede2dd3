"""The inference pool as a supervised child: it lives on the I/O loop, agents reach it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from actors import Agent, ExitReason, LocalAgentRef, Runtime
from bridges._nats import NatsBridge
from bridges._remote_backend import RemoteBackend
from bridges._wire import Subjects
from config import (
    ExLlamaV2BackendSettings,
    OpenAIBackendSettings,
    RemoteBackendSettings,
    ScriptedBackendSettings,
)
from inference import InferencePool, PoolClient
from messages import ExitKind, Unavailable
from supervisors import ChildHandle, ChildKind, ChildSpec, ProcessChild, Restart

if TYPE_CHECKING:
    from nats.aio.client import Client

    from bridges._loop import IoLoop
    from config import TierSettings
    from inference import Backend


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
        pool = make_pool()
        pool.tracing = runtime.tracing
        client = PoolClient(pool, io)
        handle: LocalAgentRef = InferencePoolAgent.spawn(runtime, instance="0", client=client)
        return handle

    return ChildSpec(
        id="pool", start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.ACTOR
    )


def model_worker_child(
    runtime: Runtime,
    io: IoLoop,
    tier: str,
    index: int,
    argv: list[str],
    *,
    env: Mapping[str, str] | None,
    shutdown: float,
) -> ChildSpec:
    """A child spec that runs one model worker process of `tier`.

    When the process dies other than by a requested stop, the pool hears
    of it (`tier_failed`), so a tier whose workers keep dying is taken out
    by its breaker and probed back in once they stay up.
    """
    name = f"worker.{tier}.{index}"

    def exited(reason: ExitReason) -> None:
        if reason.kind in {ExitKind.NORMAL, ExitKind.SHUTDOWN}:
            return
        client = runtime.inference
        if isinstance(client, PoolClient) and io.running:
            io.call_soon(client.pool.tier_failed, tier)

    def start() -> ChildHandle:
        child = ProcessChild(argv, name=name, env=env)
        child.link(exited)
        return child

    return ChildSpec(
        id=name, start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.PROCESS
    )


def worker_argv(tier: str, settings_json: str, url: str) -> list[str]:
    """The command line of one model worker process."""
    return [
        sys.executable,
        "-m",
        "bridges",
        "worker",
        "--tier",
        tier,
        "--settings-json",
        settings_json,
        "--nats",
        url,
    ]


def remote_backends(runtime: Runtime, prefix: str) -> Callable[[TierSettings], Backend]:
    """Makes the backend of a worker reached over this node's NATS connection."""
    subjects = Subjects(prefix)

    def connection() -> Client:
        transport = runtime.transport
        if isinstance(transport, NatsBridge):
            return transport.nc
        msg = "this node has no NATS connection to reach its model workers"
        raise Unavailable(msg)

    def make(tier: TierSettings) -> Backend:
        model, capacity, context_length = _assumed(tier)
        return RemoteBackend(
            connection,
            subjects.inference(tier.name),
            model=model,
            capacity=capacity,
            context_length=context_length,
            heartbeat=tier.heartbeat,
        )

    return make


def _assumed(tier: TierSettings) -> tuple[str, int, int]:
    """Model, capacity and context to assume of a tier's workers until one answers."""
    match tier.backend:
        case ScriptedBackendSettings() | OpenAIBackendSettings() | RemoteBackendSettings():
            b = tier.backend
            return b.model, b.capacity, b.context_length
        case ExLlamaV2BackendSettings():
            return Path(tier.backend.model_dir).name, 1, tier.backend.max_seq_len
