from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from actors import Agent, AgentDefaults, Runtime
from bridges import IoLoop, NatsBridge, NatsServer
from config import EventSettings, NatsSettings

START = 10.0

BridgeFactory = Callable[..., NatsBridge]


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free loopback port."""
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def io() -> Iterator[IoLoop]:
    loop = IoLoop(name="test-io").start()
    yield loop
    loop.stop()


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
