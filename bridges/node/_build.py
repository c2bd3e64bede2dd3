"""Assemble a node from settings: runtime, agent pools, root supervisor."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

import msgspec

from actors import Agent, AgentDefaults, MemoryStore, Runtime, tracing_from_settings
from bridges._audit import JetStreamAudit, LoopAudit
from bridges._bridge_child import embedded_server, embedded_server_child, nats_bridge_child
from bridges._embedded import NatsServer
from bridges._health import TREE_TIMEOUT, Health
from bridges._http import SHUTDOWN_GRACE, HttpBridge
from bridges._inference_child import (
    inference_pool_child,
    model_worker_child,
    remote_backends,
    worker_argv,
)
from bridges._loop import IoLoop
from bridges._metrics import Metrics, Snapshot, meter_from_settings
from bridges._nats import NatsBridge
from bridges._resource_child import Resources, resource_child
from bridges._state import KvStore, LoopStore, RedisStore
from config import ExLlamaV2BackendSettings, PoolSettings, Settings
from inference import PoolClient, pool_from_settings
from inference._exllamav2 import check_installed as check_exllamav2_installed
from messages import ActorfleetError, ConfigError
from supervisors import (
    Backoff,
    ChildSpec,
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
HTTP_START_TIMEOUT: Final = 5.0
# A stopping HTTP bridge lets requests in progress finish, per server.
HTTP_STOP_TIMEOUT: Final = 4 * SHUTDOWN_GRACE


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
    """The runtime a node's agents share.

    Its state store is set here for `memory`; a networked store (and the
    audit log) is set by its child in the bridges supervisor once it is open.
    """
    defaults = AgentDefaults(
        ask_timeout=settings.agents.ask_timeout, hung_margin=settings.agents.hung_margin
    )
    memory = MemoryStore() if settings.state.backend == "memory" else None
    runtime = Runtime(node=settings.node.name or None, defaults=defaults, state=memory)
    tracing = tracing_from_settings(settings.telemetry, node=runtime.node)
    if tracing is not None:
        runtime.tracing = tracing
        runtime.add_closer(tracing.shutdown)
    return runtime


def _agent_options(agent_class: type[Agent], pool: PoolSettings, key: str) -> dict[str, Any]:
    """`pools[].options` checked against the agent's `options_type`, as constructor kwargs."""
    if agent_class.options_type is None:
        if pool.options:
            raise ConfigError(key, f"{agent_class.__name__} takes no options")
        return {}
    try:
        return {"options": msgspec.convert(pool.options, agent_class.options_type)}
    except msgspec.ValidationError as exc:
        raise ConfigError(key, str(exc)) from exc


def _pool_spec(
    agent_class: type[Agent],
    pool: PoolSettings,
    settings: Settings,
    runtime: Runtime,
    options: dict[str, Any],
) -> SupervisorSpec:
    supervision = settings.supervision
    children = [
        agent_child(
            agent_class,
            runtime,
            id=str(n),
            restart=Restart(pool.restart),
            shutdown=supervision.shutdown_timeout,
            **options,
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
    """The bridges supervisor: the embedded server (if needed), state and audit, NATS, HTTP."""
    shutdown = settings.supervision.shutdown_timeout
    children = []
    resources = Resources()
    if server is not None:
        children.append(embedded_server_child(server, shutdown=shutdown))
    if settings.nats.enabled:

        def make_bridge() -> NatsBridge:
            return NatsBridge(
                runtime, io, settings.nats, settings.events, agents, url=url, metrics=metrics
            )

        drain = shutdown + settings.nats.drain_timeout
        # State and audit first: requests the bridge takes in may use them.
        children.extend(_state_children(settings, runtime, io, url, resources))
        children.append(nats_bridge_child(make_bridge, shutdown=drain))
    else:
        children.extend(_state_children(settings, runtime, io, url, resources))
    if settings.http.enabled:
        health = Health(
            runtime,
            tree,
            needs_inference=bool(settings.inference.tiers),
            needs_nats=settings.nats.enabled,
            resources=resources,
            required=_required(settings),
        )

        async def open_http() -> HttpBridge:
            bridge = HttpBridge(runtime, settings.http, exposed, health=health, metrics=metrics)
            await bridge.start()
            return bridge

        children.append(
            resource_child(
                runtime,
                io,
                id="http",
                open_resource=open_http,
                attach=lambda _bridge: None,  # it serves on its own sockets
                timeout=HTTP_START_TIMEOUT,
                shutdown=shutdown,
                stop_timeout=HTTP_STOP_TIMEOUT,
            )
        )
    return SupervisorSpec(
        name=BRIDGES_NAME,
        strategy=Strategy.ONE_FOR_ONE,
        children=children,
        max_restarts=settings.supervision.max_restarts,
        period=settings.supervision.period,
        backoff=_backoff(settings),
    )


def _required(settings: Settings) -> list[tuple[str, str]]:
    """The resources a node is not ready without: (child id, health check name)."""
    required = []
    if settings.state.backend != "memory":
        required.append(("state", "state:store"))
    if settings.state.audit_stream:
        required.append(("audit", "audit:log"))
    return required


def _state_children(
    settings: Settings, runtime: Runtime, io: IoLoop, url: str, resources: Resources
) -> list[ChildSpec]:
    """The networked state store and the audit log, each holding its connection."""
    state, nats_settings = settings.state, settings.nats
    timeout = state.timeout + nats_settings.connect_timeout
    shutdown = settings.supervision.shutdown_timeout
    children = []
    if state.backend != "memory":

        async def open_store() -> KvStore | RedisStore:
            if state.backend == "redis":
                return await RedisStore.open(state)
            return await KvStore.open(url, state, nats_settings, name=f"{runtime.node}-state")

        def use_store(store: KvStore | RedisStore | None) -> None:
            runtime.state = None if store is None else LoopStore(io, store, timeout=state.timeout)

        children.append(
            resource_child(
                runtime,
                io,
                id="state",
                open_resource=open_store,
                attach=use_store,
                timeout=timeout,
                shutdown=shutdown,
                resources=resources,
            )
        )
    if state.audit_stream:

        async def open_audit() -> JetStreamAudit:
            name = f"{runtime.node}-audit"
            return await JetStreamAudit.open(url, state, nats_settings, name=name)

        def use_audit(log: JetStreamAudit | None) -> None:
            runtime.audit = None if log is None else LoopAudit(io, log, timeout=state.timeout)

        children.append(
            resource_child(
                runtime,
                io,
                id="audit",
                open_resource=open_audit,
                attach=use_audit,
                timeout=timeout,
                shutdown=shutdown,
                resources=resources,
            )
        )
    return children


def _metrics(
    settings: Settings, runtime: Runtime, tree: Callable[[], SupervisorStatistics]
) -> Metrics:
    """The node's metrics; with `[telemetry] metrics` on, also an OpenTelemetry meter."""
    built = meter_from_settings(settings.telemetry, node=runtime.node)
    if built is None:
        metrics = Metrics()
        runtime.tool_observer = metrics.observe_tool
        return metrics
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

    metrics = Metrics(meter=provider.get_meter("actorfleet"), live=live)
    runtime.tool_observer = metrics.observe_tool
    return metrics


def build_node(settings: Settings, runtime: Runtime | None = None) -> Node:
    """A node: the inference pool, one supervisor per agent pool, then the bridges.

    The inference pool starts before the agents that may use it; agents start
    before the bridge subscribes for them, and the bridge drains before they
    stop (shutdown runs in reverse start order).

    Raises:
        ConfigError: If a pool names an agent class that cannot be imported.
    """
    runtime = runtime or build_runtime(settings)
    runtime.audit_required = bool(settings.state.audit_stream)
    agents = [
        import_agent(pool.agent, key=f"pools[{i}].agent") for i, pool in enumerate(settings.pools)
    ]
    specs = []
    for index, (agent_class, pool) in enumerate(zip(agents, settings.pools, strict=True)):
        options = _agent_options(agent_class, pool, f"pools[{index}].options")
        specs.append(_pool_spec(agent_class, pool, settings, runtime, options))
        if pool.permissions is not None:
            runtime.grants[agent_class.agent_type] = frozenset(pool.permissions)
        runtime.admission(agent_class.agent_type).configure(
            max_queue=pool.max_queue, service_time=pool.service_time
        )
    node: Node | None = None

    def tree() -> SupervisorStatistics:
        if node is None:
            msg = "the node is not built yet"
            raise RuntimeError(msg)
        return node.root.statistics(timeout=TREE_TIMEOUT)

    networked_state = settings.state.backend != "memory"
    edges = settings.nats.enabled or settings.http.enabled or networked_state
    if edges or settings.inference.tiers:
        io = IoLoop(name=f"actorfleet-io-{runtime.node}").start()
        runtime.add_closer(io.stop)
        server = embedded_server(settings.nats) if settings.nats.enabled else None
        url = settings.nats.url if server is None else server.url
        if settings.inference.tiers:
            # Before the agents, which may generate as soon as they start.
            specs.insert(0, _inference_spec(settings, runtime, io, url))
        if edges:
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
