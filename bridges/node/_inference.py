"""The inference supervisor's children: model worker processes, then the pool over them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from bridges.node._holder import resource_child
from bridges.node._pool import PoolResource
from bridges.workers import model_worker_child, remote_backends, worker_argv
from inference import check_available, pool_from_settings

if TYPE_CHECKING:
    from nats.aio.client import Client

    from bridges.node._services import NodeServices
    from config import Settings
    from inference import InferencePool
    from supervisors import ChildSpec

# Building a pool may load an in-process model (minutes for a large one).
_POOL_START_TIMEOUT: Final = 300.0


def inference_children(settings: Settings, services: NodeServices, url: str) -> list[ChildSpec]:
    """One child per model worker process, then the pool (it reaches them over NATS)."""
    shutdown = settings.supervision.shutdown_timeout
    for index, tier in enumerate(settings.inference.tiers):
        if tier.runs_processes:  # checked here, not in a worker that would crash-loop
            check_available(tier.backend, key=f"inference.tiers[{index}].backend")
    settings_json = msgspec.json.encode(settings).decode()
    children = [
        model_worker_child(
            tier.name,
            index,
            worker_argv(tier.name, settings_json, url),
            env={"CUDA_VISIBLE_DEVICES": str(tier.gpus[index])} if tier.gpus else None,
            shutdown=shutdown + settings.nats.drain_timeout,
            on_failure=lambda tier_name: _tier_failed(services, tier_name),
        )
        for tier in settings.inference.tiers
        if tier.runs_processes
        for index in range(tier.workers)
    ]

    def connection() -> Client:
        return services.nats.get().nc

    remote = remote_backends(connection, settings.nats.prefix) if settings.nats.enabled else None

    def make_pool() -> InferencePool:
        pool = pool_from_settings(settings.inference, remote=remote)
        pool.tracing = services.runtime.tracing
        return pool

    async def open_pool() -> PoolResource:
        return await PoolResource.open(make_pool, services.io)

    children.append(
        resource_child(
            services.runtime,
            services.io,
            id="pool",
            open_resource=open_pool,
            attach=lambda held: services.attach_pool(held.client),
            timeout=_POOL_START_TIMEOUT,
            shutdown=shutdown,
        )
    )
    return children


def _tier_failed(services: NodeServices, tier: str) -> None:
    """Count a worker's death against its tier's breaker (from the thread that saw it)."""
    client = services.pool.current
    if client is not None and services.io.running:
        services.io.call_soon(client.pool.tier_failed, tier)
