from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from actors import AgentDefaults, Runtime
from actors._actor import stop_all
from bridges import IoLoop, NatsServer, free_port
from bridges.nats._auth import EmbeddedUsers
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


@pytest.fixture(autouse=True, scope="session")
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Embedded servers of the tests (and their node processes) keep data in a temp dir."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved


@pytest.fixture
def auth_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server that requires credentials: the node user (confined) and the admin.

    Its users' password files are in `server.users` (`EmbeddedUsers`).
    """
    users = EmbeddedUsers(tmp_path / "auth")
    server = NatsServer(store_dir=tmp_path / "js", users=users).start()
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
    stop_all(timeout=WAIT)
    leaked = [t for t in threading.enumerate() if t not in before and not t.daemon and t.is_alive()]
    for thread in leaked:
        thread.join(WAIT)
    assert [t.name for t in leaked if t.is_alive()] == [], "actor threads outlived the test"


_local_redis: list[str] = []


def redis_url() -> str:
    """The Redis the tests use.

    `AF_TEST_REDIS_URL` if set; else the one on 127.0.0.1:6379 if it
    answers; else a `redis-server` from PATH started on a free port for this
    test run. Tests that need Redis fail, never skip, when none can be had.
    """
    explicit = os.environ.get("AF_TEST_REDIS_URL")
    url = explicit or "redis://127.0.0.1:6379/0"
    if _answers(url):
        return url
    if explicit:
        pytest.fail(f"these tests need Redis at {url} (AF_TEST_REDIS_URL)")
    if not _local_redis:
        _local_redis.append(_start_redis())
    return _local_redis[0]


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False
    finally:
        client.close()


def _start_redis() -> str:
    proc, url = start_redis_server(free_port())
    atexit.register(proc.terminate)
    return url


def start_redis_server(port: int) -> tuple[subprocess.Popen[str], str]:
    """A `redis-server` from PATH on `port`, once it says it is ready; and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "these tests need Redis: none answers on 127.0.0.1:6379 and redis-server is not"
            " on PATH (install it, or set AF_TEST_REDIS_URL)"
        )
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Wait for the server to say it is ready; a stuck start is killed at the bound.
    watchdog = threading.Timer(WAIT, proc.kill)
    watchdog.start()
    assert proc.stdout is not None
    ready = any("Ready to accept connections" in line for line in proc.stdout)
    watchdog.cancel()
    if not ready:
        pytest.fail(f"redis-server on port {port} did not start")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    return proc, f"redis://127.0.0.1:{port}/0"


def stop_redis_server(proc: subprocess.Popen[str]) -> None:
    """Stop a server `start_redis_server` started, and close its pipe."""
    proc.terminate()
    proc.wait(WAIT)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this test run's GGUF test models are built (each once, named by its parameters)."""
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def small_gguf(gguf_dir: Path) -> Path:
    """The small random Llama, Q4_0 (the `small` tier's model in the model tests)."""
    from tests.models import build_model  # noqa: PLC0415 - needs the cpu extra

    return build_model(gguf_dir, size="small", quant="Q4_0")


@pytest.fixture(scope="session")
def large_gguf(gguf_dir: Path) -> Path:
    """The large random Llama, Q8_0: several times the small one's cost per token."""
    from tests.models import build_model  # noqa: PLC0415 - needs the cpu extra

    return build_model(gguf_dir, size="large", quant="Q8_0")
