"""Health endpoints and metrics of a node, read over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from bridges import NatsBridge, NatsServer, build_node, free_port
from config import decode
from messages import Ping
from supervisors import Node
from tests.bridges.http_agents import base_url, crash_echo
from tests.conftest import WAIT

HEALTH_JSON = "application/health+json"
# How soon /healthz must show a child's restart.
REFLECTED_WITHIN = 1.0


def test_live_and_ready_answer_200_on_a_healthy_node(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert (ready.status_code, ready.text.strip()) == (200, "ready")


def test_healthz_is_health_json_with_the_tree_and_the_tiers(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == HEALTH_JSON
    report = response.json()
    assert report["status"] == "pass"
    assert report["serviceId"] == "web"
    children = {c["componentId"]: c for c in report["checks"]["supervisor:children"]}
    assert children["agents.echo/0"]["status"] == "pass"
    assert children["bridges/http"]["output"].startswith("running")
    [tier] = report["checks"]["inference:breaker"]
    assert (tier["componentId"], tier["status"], tier["observedValue"]) == ("large", "pass", 0)
    assert report["tree"]["name"] == "root"
    assert report["inference"]["tiers"][0]["breaker"] == "closed"


def test_healthz_shows_a_killed_and_restarted_child_within_a_second(
    serve: Callable[..., Any],
) -> None:
    node, client = serve()
    [agent] = node.runtime.directory.members("echo")
    agent.kill()
    limit = time.monotonic() + REFLECTED_WITHIN
    seen = None
    while time.monotonic() < limit:
        report = client.get("/healthz").json()
        seen = {c["componentId"]: c for c in report["checks"]["supervisor:children"]}
        if seen["agents.echo/0"]["observedValue"] == 1:
            break
    assert seen is not None
    assert seen["agents.echo/0"]["observedValue"] == 1, seen["agents.echo/0"]
    assert "killed" in seen["agents.echo/0"]["output"]


def test_metrics_parse_as_prometheus_text_with_requests_restarts_and_tiers(
    serve: Callable[..., Any],
) -> None:
    node, client = serve()
    assert client.post("/v1/agents/echo", json={"type": "Say", "text": "a"}).status_code == 200
    crash_echo(node, client)
    assert client.post("/v1/generate", json={"prompt": "hi"}).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    counts = {
        (s.labels["agent_type"], s.labels["status"]): s.value
        for s in families["actorfleet_requests_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts[("echo", "200")] == 1
    assert counts[("echo", "500")] == 1
    assert counts[("generate", "200")] == 1
    restarts = {
        (s.labels["supervisor"], s.labels["child"]): s.value
        for s in families["actorfleet_child_restarts"].samples
    }
    assert restarts[("agents.echo", "0")] == 1  # the crashed echo agent was restarted
    assert restarts[("agents.ping", "0")] == 0
    tokens = {s.labels["tier"]: s.value for s in families["actorfleet_inference_tokens"].samples}
    assert tokens["large"] == 5
    breaker = {s.labels["tier"]: s.value for s in families["actorfleet_inference_breaker"].samples}
    assert breaker["large"] == 0


def test_health_endpoints_can_listen_on_their_own_port(serve: Callable[..., Any]) -> None:
    port = free_port()
    _node, client = serve(health_port=port)
    health = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=WAIT)
    assert health.status_code == 200
    assert client.get("/livez").status_code == 404  # not on the API's port
    assert client.post("/v1/agents/ping", json={}).status_code == 200


def ping_node(url: str) -> Node:
    """A node with one ping agent, NATS at `url` and HTTP on a free port."""
    raw = {
        "node": {"name": "web"},
        "nats": {"url": url, "embed": False},
        "http": {"enabled": True, "port": 0},
        "pools": [{"agent": "actors:PingAgent", "size": 1}],
    }
    return build_node(decode(raw))


def test_readyz_fails_while_nats_is_down_and_recovers(nats_server: NatsServer) -> None:
    node = ping_node(nats_server.url)
    node.start()
    try:
        url = base_url(node)
        assert httpx.get(f"{url}/readyz", timeout=WAIT).status_code == 200
        bridge = node.runtime.transport
        assert isinstance(bridge, NatsBridge)
        states = {"disconnected": threading.Event(), "connected": threading.Event()}
        bridge.on_state_change(lambda state: states[state].set() if state in states else None)
        nats_server.kill()
        assert states["disconnected"].wait(WAIT)
        down = httpx.get(f"{url}/readyz", timeout=WAIT)
        assert (down.status_code, down.text.strip()) == (503, "NATS is not connected")
        report = httpx.get(f"{url}/healthz", timeout=WAIT)
        assert (report.status_code, report.json()["status"]) == (503, "fail")
        nats_server.start()
        assert states["connected"].wait(WAIT)
        assert httpx.get(f"{url}/readyz", timeout=WAIT).status_code == 200
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_the_same_figures_reach_an_opentelemetry_meter_when_configured(
    serve: Callable[..., Any],
) -> None:
    node, client = serve(telemetry={"metrics": "memory"})
    assert client.post("/v1/agents/echo", json={"type": "Say", "text": "a"}).status_code == 200
    assert client.post("/v1/generate", json={"prompt": "hi"}).status_code == 200
    reader = node.runtime.metrics_reader
    assert isinstance(reader, InMemoryMetricReader)
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    requests = {
        (p.attributes["agent_type"], p.attributes["status"]): p.count
        for p in metrics["actorfleet.request.duration"].data.data_points
    }
    assert requests == {("echo", "200"): 1, ("generate", "200"): 1}
    restarts = {
        (p.attributes["supervisor"], p.attributes["child"]): p.value
        for p in metrics["actorfleet.child.restarts"].data.data_points
    }
    assert restarts[("agents.echo", "0")] == 0
    [tokens] = metrics["actorfleet.inference.tokens"].data.data_points
    assert (tokens.attributes["tier"], tokens.value) == ("large", 5)


def test_requests_served_over_nats_are_counted_by_status(
    nats_server: NatsServer, connect: Any, other_runtime: Any
) -> None:
    node = ping_node(nats_server.url)
    node.start()
    try:
        connect(other_runtime)
        assert other_runtime.ref("ping").ask(Ping(payload="x"), timeout=WAIT).payload == "x"
        text = httpx.get(f"{base_url(node)}/metrics", timeout=WAIT).text
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {
        (s.labels["edge"], s.labels["agent_type"], s.labels["status"]): s.value
        for s in families["actorfleet_requests_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {("nats", "ping", "ok"): 1}


def test_healthz_never_shows_the_password_in_a_nats_url(nats_server: NatsServer) -> None:
    with_password = nats_server.url.replace("nats://", "nats://alice:s3cret-pw@")
    node = ping_node(with_password)
    node.start()
    try:
        report = httpx.get(f"{base_url(node)}/healthz", timeout=WAIT)
        assert report.status_code == 200
        assert "s3cret-pw" not in report.text
        assert "alice:***@" in report.text  # the server is still named
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_a_crashed_handlers_exit_names_its_exception_type_not_its_message(
    serve: Callable[..., Any],
) -> None:
    # The message may quote the request; /healthz is read without a key.
    node, client = serve()
    crash_echo(node, client)
    report = client.get("/healthz").json()
    children = {c["componentId"]: c for c in report["checks"]["supervisor:children"]}
    output = children["agents.echo/0"]["output"]
    assert "last exit crashed: RuntimeError" in output
    assert "secret" not in output
    assert "secret" not in client.get("/healthz").text
