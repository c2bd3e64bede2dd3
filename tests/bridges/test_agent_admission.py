"""Agent admission seen from other nodes (NATS) and from HTTP clients: the same refusals."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from actors import Runtime
from actors._admission import UNMEASURED_RETRY_AFTER
from bridges import build_node, build_runtime
from config import decode
from messages import Overloaded
from supervisors import Node
from tests.actors.gated import held
from tests.agents import Echo, WorkerAgent
from tests.bridges.conftest import BridgeFactory
from tests.bridges.http_agents import ServedNodes
from tests.conftest import WAIT

PROBLEM = "application/problem+json"


@pytest.fixture
def nodes() -> Iterator[ServedNodes]:
    served = ServedNodes()
    yield served
    served.stop_all()


def test_a_full_queue_refuses_a_request_from_another_node_with_overloaded(
    runtime: Runtime, other_runtime: Runtime, connect: BridgeFactory
) -> None:
    runtime.admission("worker").configure(max_queue=1)
    WorkerAgent.spawn(runtime)
    connect(runtime, [WorkerAgent])
    connect(other_runtime)
    local = runtime.ref("worker")
    with held(local, "nats-full"):
        queued = local.ask_async(Echo(text="queued"))
        with pytest.raises(Overloaded) as info:
            other_runtime.ref("worker").ask(Echo(text="refused"), timeout=WAIT)
        assert info.value.retry_after == UNMEASURED_RETRY_AFTER
    assert queued.get(timeout=WAIT).text == "queued"


def test_a_request_from_another_node_that_could_not_finish_in_time_is_refused_at_once(
    runtime: Runtime, other_runtime: Runtime, connect: BridgeFactory
) -> None:
    runtime.admission("worker").configure(max_queue=8, service_time=2.0)
    WorkerAgent.spawn(runtime)
    connect(runtime, [WorkerAgent])
    connect(other_runtime)
    with held(runtime.ref("worker"), "nats-late"):
        reply = other_runtime.ref("worker").ask_async(Echo(text="late"), timeout=1.0)
        with pytest.raises(Overloaded, match="deadline") as info:
            reply.get()  # an answer, not a RequestTimeout at the deadline
        assert info.value.retry_after is not None
        assert info.value.retry_after > 1.0


def _http_node(*, max_queue: int = 8, service_time: float = 0.0) -> tuple[Runtime, Node]:
    """A node serving one worker over HTTP, its admission set by its pool settings."""
    settings = decode(
        {
            "node": {"name": "admission"},
            "nats": {"enabled": False},
            "http": {"enabled": True, "port": 0},
            "pools": [
                {
                    "agent": "tests.agents:WorkerAgent",
                    "size": 1,
                    "max_queue": max_queue,
                    "service_time": service_time,
                }
            ],
        }
    )
    runtime = build_runtime(settings)
    return runtime, build_node(settings, runtime)


@pytest.mark.slow
def test_an_http_request_to_a_full_queue_gets_429_with_retry_after(nodes: ServedNodes) -> None:
    runtime, node = _http_node(max_queue=1)
    _node, client = nodes.start(node)
    worker = runtime.ref("worker")
    with held(worker, "http-full"):
        queued = worker.ask_async(Echo(text="queued"))
        response = client.post("/v1/agents/worker", json={"type": "Echo", "text": "refused"})
        assert response.status_code == 429
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["retry-after"] == str(math.ceil(UNMEASURED_RETRY_AFTER))
        assert response.json()["code"] == "overloaded"
    assert queued.get(timeout=WAIT).text == "queued"


@pytest.mark.slow
def test_an_http_request_that_could_not_finish_in_time_gets_429_not_504(
    nodes: ServedNodes,
) -> None:
    runtime, node = _http_node(service_time=2.0)
    _node, client = nodes.start(node)
    with held(runtime.ref("worker"), "http-late"):
        response = client.post(
            "/v1/agents/worker",
            json={"type": "Echo", "text": "late"},
            headers={"X-Request-Timeout": "1"},
        )
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 2  # the gated handler: ~2 s


def test_a_node_configures_each_types_admission_from_its_pool_settings() -> None:
    settings = decode(
        {
            "pools": [
                {"agent": "tests.agents:WorkerAgent", "max_queue": 3, "service_time": 0.25},
            ]
        }
    )
    runtime = build_runtime(settings)
    try:
        build_node(settings, runtime)
        admission = runtime.admission("worker")
        assert (admission.max_queue, admission.service_s) == (3, 0.25)
    finally:
        runtime.close()
