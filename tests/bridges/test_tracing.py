"""One trace from an HTTP request on one node to an agent and its inference on another."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from bridges import NatsServer, build_node
from config import decode
from supervisors import Node
from tests.bridges.http_agents import base_url
from tests.conftest import WAIT

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def _node(url: str, name: str, **sections: Any) -> Node:
    raw = {
        "node": {"name": name},
        "nats": {"url": url, "embed": False},
        "telemetry": {"traces": "memory"},
        **sections,
    }
    return build_node(decode(raw))


class EndedSpans(SpanExporter):
    """Collects a node's spans as they end, and waits (bounded) for them.

    A handler's span ends just after its reply is on its way, so the caller
    may hear back before the span is done.
    """

    def __init__(self, node: Node) -> None:
        self.spans: list[ReadableSpan] = []
        self._changed = threading.Condition()
        tracing = node.runtime.tracing
        assert tracing is not None
        tracing.provider.add_span_processor(SimpleSpanProcessor(self))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._changed:
            self.spans.extend(spans)
            self._changed.notify_all()
        return SpanExportResult.SUCCESS

    def wait(self, count: int) -> list[ReadableSpan]:
        with self._changed:
            ended = self._changed.wait_for(lambda: len(self.spans) >= count, WAIT)
            spans = list(self.spans)
        assert ended, f"{len(spans)} spans, expected {count}"
        return spans


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
    worker_spans, gateway_spans = EndedSpans(worker), EndedSpans(gateway)
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
        server, send = sorted(gateway_spans.wait(2), key=lambda s: s.kind.value)
        generate, process = sorted(worker_spans.wait(2), key=lambda s: s.name)
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
