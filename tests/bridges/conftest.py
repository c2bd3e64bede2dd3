from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors import Agent, AgentDefaults, Runtime
from bridges import IoLoop, NatsBridge, NatsServer
from config import EventSettings, NatsSettings
from supervisors import Node
from tests.bridges.http_agents import EchoAgent, ServedNodes, StoryAgent, http_node

START = 10.0

BridgeFactory = Callable[..., NatsBridge]


@pytest.fixture
def connect(nats_server: NatsServer, io: IoLoop) -> Iterator[BridgeFactory]:
    """Start a bridge for a runtime (serving `agents`); all are closed after the test."""
    started: list[NatsBridge] = []

    def factory(
        runtime: Runtime,
        agents: Sequence[type[Agent]] = (),
        *,
        events: EventSettings | None = None,
        **settings: object,
    ) -> NatsBridge:
        nats = NatsSettings(url=nats_server.url, **settings)  # type: ignore[arg-type]
        bridge = NatsBridge(runtime, io, nats, events or EventSettings(), agents)
        io.run(bridge.start(), timeout=START)
        started.append(bridge)
        return bridge

    yield factory
    for bridge in reversed(started):
        io.run(bridge.close(), timeout=START)


@pytest.fixture
def other_runtime() -> Iterator[Runtime]:
    """A second node's runtime (the caller side in most tests)."""
    rt = Runtime(node="caller", defaults=AgentDefaults(ask_timeout=5.0, hung_margin=5.0))
    yield rt
    rt.close()


ROOT = Path(__file__).resolve().parents[2]


def start_node_process(config: Path, name: str, log: Path) -> subprocess.Popen[str]:
    """Run `actorfleet run --config config` as node `name`; return once it is ready."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AF_NODE_NAME": name}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridges", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            env=env,
        )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    proc.wait(START)
    pytest.fail(f"node {name} exited with {proc.returncode}: {log.read_text()}")


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Node, httpx.Client]]]:
    served = ServedNodes()

    def start(telemetry: dict[str, Any] | None = None, **http: Any) -> tuple[Node, httpx.Client]:
        EchoAgent.handled.clear()
        EchoAgent.started.clear()
        StoryAgent.dropped.clear()
        StoryAgent.finished.clear()
        return served.start(http_node(telemetry, **http))

    yield start
    served.stop_all()
