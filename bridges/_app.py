"""Assemble a node from settings: runtime, agent pools, root supervisor."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Final

import msgspec

from actors import Agent, AgentDefaults, MemoryStore, Runtime, tracing_from_settings
from bridges._bridge_child import embedded_server, embedded_server_child, nats_bridge_child
from bridges._embedded import NatsServer
from bridges._health import TREE_TIMEOUT, Health
from bridges._http import HttpBridge
from bridges._http_child import http_bridge_child
from bridges._inference_child import (
    inference_pool_child,
    model_worker_child,
    remote_backends,
    worker_argv,
)
from bridges._loop import IoLoop
from bridges._metrics import Metrics, Snapshot, meter_from_settings
from bridges._nats import NatsBridge
from config import ExLlamaV2BackendSettings, PoolSettings, Settings
from inference import PoolClient, pool_from_settings
from inference._exllamav2 import check_installed as check_exllamav2_installed
from messages import ActorfleetError, ConfigError
from supervisors import (
    Backoff,
    Node,
    Restart,
    Strategy,
    SupervisorSpec,
    SupervisorStatistics,
    agent_child,
    supervisor_child,
)

ROOT_NAME: Final = "root"
BRIDGES_NAME: Final = "bridges"
INFERENCE_NAME: Final = "inference"


def import_agent(path: str, *, key: str) -> type[Agent]:
    """Import `module:Class` and check that it is an Agent subclass."""
    module_name, _, attribute = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import {path}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise ConfigError(key, f"{path} is not an actors.Agent subclass")
    return target


def build_runtime(settings: Settings) -> Runtime:
    """The runtime a node's agents share."""
    defaults = AgentDefaults(
        ask_timeout=settings.agents.ask_timeout, hung_margin=settings.agents.hung_margin
    )
    runtime = Runtime(node=settings.node.name or None, defaults=defaults, state=MemoryStore())
    tracing = tracing_from_settings(settings.telemetry, node=runtime.node)
    if tracing is not None:
        runtime.tracing = tracing
        runtime.add_closer(tracing.shutdown)
    return runtime


def _pool_spec(
    agent_class: type[Agent], pool: PoolSettings, settings: Settings, runtime: Runtime
) -> SupervisorSpec:
    supervision = settings.supervision
    children = [
        agent_child(
            agent_class,
            runtime,
            id=str(n),
            restart=Restart(pool.restart),
            shutdown=supervision.shutdown_timeout,
        )
        for n in range(pool.size)
    ]
    return SupervisorSpec(
        name=f"agents.{agent_class.agent_type}",
        strategy=Strategy.ONE_FOR_ONE,
        children=children,
        max_restarts=supervision.max_restarts,
        period=supervision.period,
        backoff=_backoff(settings),
    )


def _backoff(settings: Settings) -> Backoff:
    b = settings.supervision.backoff
    return Backoff(
        base=b.base, factor=b.factor, cap=b.cap, jitter=b.jitter, reset_after=b.reset_after
    )


def _inference_spec(settings: Settings, runtime: Runtime, io: IoLoop, url: str) -> SupervisorSpec:
    """The inference supervisor: model worker processes, then the pool over them all."""
    shutdown = settings.supervision.shutdown_timeout
    for tier in settings.inference.tiers:
        if tier.runs_processes and isinstance(tier.backend, ExLlamaV2BackendSettings):
            check_exllamav2_installed()  # here, not in a worker that would crash-loop
    settings_json = msgspec.json.encode(settings).decode()
    children = [
        model_worker_child(
            runtime,
            io,
            tier.name,
            index,
            worker_argv(tier.name, settings_json, url),
            env={"CUDA_VISIBLE_DEVICES": str(tier.gpus[index])} if tier.gpus else None,
            shutdown=shutdown + settings.nats.drain_timeout,
        )
        for tier in settings.inference.tiers
        if tier.runs_processes
        for index in range(tier.workers)
    ]
    remote = remote_backends(runtime, settings.nats.prefix) if settings.nats.enabled else None
    children.append(
        inference_pool_child(
            runtime,
            io,
            lambda: pool_from_settings(settings.inference, remote=remote),
            shutdown=shutdown,
        )
    )
    return SupervisorSpec(
        name=INFERENCE_NAME,
        strategy=Strategy.ONE_FOR_ONE,
        children=children,
        max_restarts=settings.supervision.max_restarts,
        period=settings.supervision.period,
        backoff=_backoff(settings),
    )


def _bridges_spec(
    settings: Settings,
    runtime: Runtime,
    io: IoLoop,
    agents: list[type[Agent]],
    *,
    server: NatsServer | None,
    url: str,
    tree: Callable[[], SupervisorStatistics],
    exposed: list[type[Agent]],
    metrics: Metrics,
) -> SupervisorSpec:
    """The bridges supervisor: the embedded server (if needed), NATS, then HTTP."""
    shutdown = settings.supervision.shutdown_timeout
    children = []
    if server is not None:
        children.append(embedded_server_child(server, shutdown=shutdown))
    if settings.nats.enabled:

        def make_bridge() -> NatsBridge:
            return NatsBridge(
                runtime, io, settings.nats, settings.events, agents, url=url, metrics=metrics
            )

        drain = shutdown + settings.nats.drain_timeout
        children.append(nats_bridge_child(make_bridge, shutdown=drain))
    if settings.http.enabled:
        health = Health(
            runtime,
            tree,
            needs_inference=bool(settings.inference.tiers),
            needs_nats=settings.nats.enabled,
        )

        def make_http() -> HttpBridge:
            return HttpBridge(runtime, settings.http, exposed, health=health, metrics=metrics)

        children.append(http_bridge_child(runtime, io, make_http, shutdown=shutdown))
    return SupervisorSpec(
        name=BRIDGES_NAME,
        strategy=Strategy.ONE_FOR_ONE,
        children=children,
        max_restarts=settings.supervision.max_restarts,
        period=settings.supervision.period,
        backoff=_backoff(settings),
    )


def _metrics(
    settings: Settings, runtime: Runtime, tree: Callable[[], SupervisorStatistics]
) -> Metrics:
    """The node's metrics; with `[telemetry] metrics` on, also an OpenTelemetry meter."""
    built = meter_from_settings(settings.telemetry, node=runtime.node)
    if built is None:
        return Metrics()
    provider, reader = built
    runtime.metrics_reader = reader
    runtime.add_closer(provider.shutdown)

    def live() -> Snapshot:
        client = runtime.inference
        pool = client.pool.statistics() if isinstance(client, PoolClient) else None
        try:
            return Snapshot(tree(), pool)
        except (RuntimeError, ActorfleetError):
            return Snapshot(None, pool)  # not started yet, or stopping

    return Metrics(meter=provider.get_meter("actorfleet"), live=live)


def build_node(settings: Settings, runtime: Runtime | None = None) -> Node:
    """A node: the inference pool, one supervisor per agent pool, then the bridges.

    The inference pool starts before the agents that may use it; agents start
    before the bridge subscribes for them, and the bridge drains before they
    stop (shutdown runs in reverse start order).

    Raises:
        ConfigError: If a pool names an agent class that cannot be imported.
    """
    runtime = runtime or build_runtime(settings)
    agents = [
        import_agent(pool.agent, key=f"pools[{i}].agent") for i, pool in enumerate(settings.pools)
    ]
    specs = [
        _pool_spec(agent_class, pool, settings, runtime)
        for agent_class, pool in zip(agents, settings.pools, strict=True)
    ]
    node: Node | None = None

    def tree() -> SupervisorStatistics:
        if node is None:
            msg = "the node is not built yet"
            raise RuntimeError(msg)
        return node.root.statistics(timeout=TREE_TIMEOUT)

    if settings.nats.enabled or settings.inference.tiers or settings.http.enabled:
        io = IoLoop(name=f"actorfleet-io-{runtime.node}").start()
        runtime.add_closer(io.stop)
        server = embedded_server(settings.nats) if settings.nats.enabled else None
        url = settings.nats.url if server is None else server.url
        if settings.inference.tiers:
            # Before the agents, which may generate as soon as they start.
            specs.insert(0, _inference_spec(settings, runtime, io, url))
        if settings.nats.enabled or settings.http.enabled:
            unique = list(dict.fromkeys(agents))
            exposed = [
                import_agent(path, key=f"http.agents[{i}]")
                for i, path in enumerate(settings.http.agents)
            ]
            specs.append(
                _bridges_spec(
                    settings,
                    runtime,
                    io,
                    unique,
                    server=server,
                    url=url,
                    tree=tree,
                    exposed=list(dict.fromkeys(unique + exposed)),
                    metrics=_metrics(settings, runtime, tree),
                )
            )
    root = SupervisorSpec(
        name=ROOT_NAME,
        strategy=Strategy.ONE_FOR_ONE,
        children=[supervisor_child(spec, runtime) for spec in specs],
        max_restarts=settings.supervision.max_restarts,
        period=settings.supervision.period,
        backoff=_backoff(settings),
    )
    node = Node(root, runtime)
    return node
