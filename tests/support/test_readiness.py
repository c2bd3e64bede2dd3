"""Readiness tells the truth about state and audit; a connection lost for good is replaced."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import nats.errors
import pytest

from bridges import free_port
from messages import ChildRestarted
from tests.conftest import WAIT, EventRecorder, start_redis_server, stop_redis_server
from tests.support.conftest import Service

BILLING = {"user_id": "jane", "message": "I was charged twice for my March invoice"}


def test_readiness_fails_while_redis_is_down_and_returns_when_it_is_back(
    start_service: Callable[..., Service],
) -> None:
    port = free_port()
    redis_server, url = start_redis_server(port)
    try:
        _, client = start_service(state="redis", redis_at=url)
        assert client.get("/readyz").status_code == 200
        stop_redis_server(redis_server)
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "Redis" in not_ready.text
        assert "does not answer" in not_ready.text
        health = client.get("/healthz")
        assert health.status_code == 503
        [check] = health.json()["checks"]["state:store"]
        assert check["status"] == "fail"
        assert "Redis" in check["output"]
        redis_server, _ = start_redis_server(port)
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/agents/support", json=BILLING).status_code == 200
    finally:
        stop_redis_server(redis_server)


def _connection_of(service: Service, child: str) -> object:
    node, _ = service
    if child == "state":
        return node.runtime.state.store._nc  # type: ignore[union-attr]
    return node.runtime.audit.log._nc  # type: ignore[union-attr]


async def _break_protocol(nc: object) -> None:
    # What a 5,000-character state key once did: the server answers "-ERR
    # maximum control line exceeded" and drops the connection, and nats-py
    # closes the client for good.
    await nc.publish("x" * 5000, b"")  # type: ignore[attr-defined]
    await nc.flush(timeout=1)  # type: ignore[attr-defined]


@pytest.mark.parametrize("child", ["state", "audit"])
def test_a_connection_closed_for_good_crashes_its_child_which_is_restarted(
    start_service: Callable[..., Service], child: str
) -> None:
    service = start_service(state="kv")
    node, client = service
    recorder = EventRecorder()
    unsubscribe = node.runtime.events.subscribe(recorder)
    try:
        nc = _connection_of(service, child)
        # The flush may fail, or not, depending on who notices the closing first.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            node.runtime.state.io.run(_break_protocol(nc), timeout=WAIT)  # type: ignore[union-attr]
        recorder.wait_for(lambda e: isinstance(e, ChildRestarted) and e.child_id == child)
    finally:
        unsubscribe()
    assert nc.is_closed  # type: ignore[attr-defined]
    assert _connection_of(service, child) is not nc
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/agents/support", json=BILLING).status_code == 200
