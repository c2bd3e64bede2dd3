"""Assemble a node from settings: runtime, agent pools, root supervisor."""

from __future__ import annotations

import importlib
from typing import Final

from actors import Agent, AgentDefaults, MemoryStore, Runtime
from config import PoolSettings, Settings
from messages import ConfigError
from supervisors import (
    Backoff,
    Node,
    Restart,
    Strategy,
    SupervisorSpec,
    agent_child,
    supervisor_child,
)

ROOT_NAME: Final = "root"


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
    return Runtime(node=settings.node.name or None, defaults=defaults, state=MemoryStore())


def _pool_spec(
    index: int, pool: PoolSettings, settings: Settings, runtime: Runtime
) -> SupervisorSpec:
    agent_class = import_agent(pool.agent, key=f"pools[{index}].agent")
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


def build_node(settings: Settings, runtime: Runtime | None = None) -> Node:
    """A node whose root supervisor runs one supervisor per agent pool.

    Raises:
        ConfigError: If a pool names an agent class that cannot be imported.
    """
    runtime = runtime or build_runtime(settings)
    pools = [_pool_spec(i, pool, settings, runtime) for i, pool in enumerate(settings.pools)]
    root = SupervisorSpec(
        name=ROOT_NAME,
        strategy=Strategy.ONE_FOR_ONE,
        children=[supervisor_child(spec, runtime) for spec in pools],
        max_restarts=settings.supervision.max_restarts,
        period=settings.supervision.period,
        backoff=_backoff(settings),
    )
    return Node(root, runtime)
