"""Assemble a node from settings: runtime, agent pools, root supervisor."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

import msgspec

from actors import Agent, AgentDefaults, MemoryStore, Runtime, tracing_from_settings
from bridges._held import Held
from bridges._loop import IoLoop
from bridges._seam import PoolClient
from bridges.http._health import TREE_TIMEOUT
from bridges.http._metrics import Metrics, Snapshot, meter_from_settings
from bridges.nats._auth import JetStreamNames, connect_options
from bridges.nats._embedded import embedded_server, with_embedded_credentials
from bridges.node._edges import edge_children
from bridges.node._inference import inference_children
from bridges.node._services import NodeServices
from bridges.stores import is_networked
from config import PoolSettings, Settings
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
    """Import `module:Class` and check that it is an Agent subclass.

    Raises:
        ConfigError: Naming `key`, if it cannot be imported (whatever its
            module raised) or is no Agent subclass.
    """
    module_name, _, attribute = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import {path}: {exc}") from exc
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise ConfigError(key, f"cannot import {path}: {exc.msg} at {where}") from exc
    except Exception as exc:  # the module's own code failed as it was imported
        msg = f"cannot import {path}: importing it raised {type(exc).__name__}: {exc}"
        raise ConfigError(key, msg) from exc
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
    memory = None if is_networked(settings.state.backend) else MemoryStore()
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


def _supervisor(name: str, children: list[Any], settings: Settings) -> SupervisorSpec:
    supervision = settings.supervision
    return SupervisorSpec(
        name=name,
        strategy=Strategy.ONE_FOR_ONE,
        children=children,
        max_restarts=supervision.max_restarts,
        period=supervision.period,
        backoff=_backoff(settings),
    )


def _metrics(
    settings: Settings,
    runtime: Runtime,
    tree: Callable[[], SupervisorStatistics],
    pool: Held[PoolClient],
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
        client = pool.current
        stats = None if client is None else client.pool.statistics()
        try:
            return Snapshot(tree(), stats)
        except (RuntimeError, ActorfleetError):
            return Snapshot(None, stats)  # not started yet, or stopping

    metrics = Metrics(meter=provider.get_meter("actorfleet"), live=live)
    runtime.tool_observer = metrics.observe_tool
    return metrics


def _with_node_credentials(settings: Settings) -> Settings:
    """`settings` whose NATS connections authenticate as the embedded server's node user.

    Only when none is configured and that user's password can be read here.
    The credentials and TLS files are checked now, so bad ones fail the start.

    Raises:
        ConfigError: If a credential or TLS setting cannot be used.
    """
    nats = with_embedded_credentials(settings.nats)
    connect_options(nats)
    return settings if nats is settings.nats else msgspec.structs.replace(settings, nats=nats)


def build_node(settings: Settings, runtime: Runtime | None = None) -> Node:
    """A node: the inference pool, one supervisor per agent pool, then the bridges.

    The inference pool starts before the agents that may use it; agents start
    before the bridge subscribes for them, and the bridge drains before they
    stop (shutdown runs in reverse start order).

    Raises:
        ConfigError: If a pool names an agent class that cannot be imported,
            or a NATS credential or TLS file cannot be used.
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

    edges = settings.nats.enabled or settings.http.enabled or is_networked(settings.state.backend)
    if edges or settings.inference.tiers:
        io = IoLoop(name=f"actorfleet-io-{runtime.node}").start()
        runtime.add_closer(io.stop)
        pool_slot: Held[PoolClient] = Held("the inference pool")
        services = NodeServices(
            runtime=runtime,
            io=io,
            metrics=_metrics(settings, runtime, tree, pool_slot),
            tree=tree,
            pool=pool_slot,
        )
        server = None
        if settings.nats.enabled:
            server = embedded_server(settings.nats, names=JetStreamNames.from_settings(settings))
            settings = _with_node_credentials(settings)
        url = settings.nats.url if server is None else server.url
        if settings.inference.tiers:
            # Before the agents, which may generate as soon as they start.
            children = inference_children(settings, services, url)
            specs.insert(0, _supervisor(INFERENCE_NAME, children, settings))
        if edges:
            unique = list(dict.fromkeys(agents))
            exposed = [
                import_agent(path, key=f"http.agents[{i}]")
                for i, path in enumerate(settings.http.agents)
            ]
            children = edge_children(
                settings,
                services,
                unique,
                server=server,
                url=url,
                exposed=list(dict.fromkeys(unique + exposed)),
            )
            specs.append(_supervisor(BRIDGES_NAME, children, settings))
    root = _supervisor(ROOT_NAME, [supervisor_child(spec, runtime) for spec in specs], settings)
    node = Node(root, runtime, gc_freeze=settings.node.gc_freeze)
    return node
