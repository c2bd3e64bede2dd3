"""One trace from an HTTP request on one node to an agent and its inference on another."""

from __future__ import annotations

import time
from typing import Any

import httpx
from opentelemetry.trace import SpanKind

from bridges import NatsServer, build_node
from config import decode
from supervisors import Node
from tests.bridges.http_agents import base_url
from tests.conftest import WAIT

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
_LOOK_AGAIN = 0.01


def _node(url: str, name: str, **sections: Any) -> Node:
    raw = {
        "node": {"name": name},
        "nats": {"url": url, "embed": False},
        "telemetry": {"traces": "memory"},
        **sections,
    }
    return build_node(decode(raw))


def _spans(node: Node, count: int) -> list[Any]:
    """The node's finished spans, once there are `count` (a handler's span ends after
    its reply is on its way, so the caller may hear back first)."""
    tracing = node.runtime.tracing
    assert tracing is not None
    assert tracing.exporter is not None
    limit = time.monotonic() + WAIT
    while len(spans := tracing.exporter.get_finished_spans()) < count:
        assert time.monotonic() < limit, f"{len(spans)} spans, expected {count}"
        time.sleep(_LOOK_AGAIN)
    return list(spans)


def test_one_trace_runs_from_http_on_one_node_to_the_agent_and_its_model_on_another(
    nats_server: NatsServer,
) -> None:
    worker = _node(
        nats_server.url,
        "worker",
        pools=[{"agent": "tests.bridges.http_agents:SummaryAgent", "size": 1}],
        inference={
            "tiers": [
                {
                    "name": "large",
                    "backend": {"kind": "scripted", "model": "scripted-large"},
                }
            ]
        },
    )
    gateway = _node(
        nats_server.url,
        "gateway",
        http={"enabled": True, "port": 0, "agents": ["tests.bridges.http_agents:SummaryAgent"]},
    )
    worker.start()
    gateway.start()
    try:
        response = httpx.post(
            f"{base_url(gateway)}/v1/agents/summary",
            json={"text": "tell me everything"},
            headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
            timeout=WAIT,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "scripted-large"
        server, send = sorted(_spans(gateway, 2), key=lambda s: s.kind.value)
        generate, process = sorted(_spans(worker, 2), key=lambda s: s.name)
    finally:
        gateway.stop()
        gateway.run(handle_signals=False)
        worker.stop()
        worker.run(handle_signals=False)
    spans = [server, send, process, generate]
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    assert (server.kind, server.name) == (SpanKind.SERVER, "POST /v1/agents/summary")
    assert format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert server.attributes["http.response.status_code"] == 200
    assert (send.kind, send.name) == (SpanKind.PRODUCER, "send summary")
    assert send.parent.span_id == server.context.span_id
    assert send.attributes["messaging.system"] == "nats"
    assert (process.kind, process.name) == (SpanKind.CONSUMER, "process Summarise")
    assert process.parent.span_id == send.context.span_id
    assert process.resource.attributes["service.instance.id"] == "worker"
    assert (generate.kind, generate.name) == (SpanKind.CLIENT, "generate large")
    assert generate.parent.span_id == process.context.span_id
    assert generate.attributes["gen_ai.usage.output_tokens"] == 3
    assert generate.attributes["gen_ai.system"] == "scripted"
