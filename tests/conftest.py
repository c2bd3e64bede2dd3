from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pykka
import pytest
import redis

from actors import AgentDefaults, Runtime
from bridges import IoLoop, NatsServer
from messages import SupervisionEvent

WAIT = 5.0


class EventRecorder:
    """Collects supervision events and lets a test wait for one, with a bound."""

    def __init__(self) -> None:
        self.events: list[SupervisionEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: SupervisionEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[SupervisionEvent], bool],
        *,
        count: int = 1,
        timeout: float = WAIT,
    ) -> list[SupervisionEvent]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for e in self.events if predicate(e)) >= count, timeout
            )
            matching = [e for e in self.events if predicate(e)]
        assert ok, f"waited {timeout} s for {count} matching events; saw {self.events}"
        return matching

    def of(self, event_type: type) -> list[SupervisionEvent]:
        with self._cond:
            return [e for e in self.events if isinstance(e, event_type)]


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
def runtime() -> Iterator[Runtime]:
    rt = Runtime(node="test", defaults=AgentDefaults(ask_timeout=5.0, hung_margin=5.0))
    yield rt
    rt.close()


@pytest.fixture
def events(runtime: Runtime) -> Iterator[EventRecorder]:
    recorder = EventRecorder()
    unsubscribe = runtime.events.subscribe(recorder)
    yield recorder
    unsubscribe()


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    pykka.ActorRegistry.stop_all(timeout=WAIT)
    leaked = [t for t in threading.enumerate() if t not in before and not t.daemon and t.is_alive()]
    for thread in leaked:
        thread.join(WAIT)
    assert [t.name for t in leaked if t.is_alive()] == [], "actor threads outlived the test"


def redis_url() -> str:
    """The Redis the tests use (`AF_TEST_REDIS_URL`, default the local one).

    Tests that need it fail, never skip, when it does not answer: CI starts one.
    """
    url = os.environ.get("AF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"these tests need Redis at {url} (set AF_TEST_REDIS_URL): {exc}")
    finally:
        client.close()
    return url
