"""OpenTelemetry spans for messages, carried in `Metadata.traceparent`.

Handlers run on actor threads and the loop runs many requests at once, so
nothing here relies on a "current span": each span names its parent from
the metadata of the message it serves, and the metadata of what it causes
carries the new span on (W3C trace context). Spans follow the messaging
semantic conventions (`messaging.system`, `messaging.operation.type`,
`messaging.destination.name`, `messaging.message.id`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from messages import ConfigError, Metadata

if TYPE_CHECKING:
    from config import TelemetrySettings

MESSAGING_SYSTEM: Final = "actorfleet"
_propagator: Final = TraceContextTextMapPropagator()


class Tracing:
    """A node's tracer and the helpers that tie spans to message metadata.

    Args:
        provider: The node's own tracer provider (not the global one, so
            several nodes in one process keep their spans apart).
        exporter: The in-memory exporter, when spans are kept for tests.
    """

    def __init__(self, provider: TracerProvider, exporter: InMemorySpanExporter | None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("actorfleet")
        self.exporter = exporter

    def start(
        self,
        name: str,
        *,
        kind: SpanKind,
        parent: Metadata | None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        """Start a span whose parent is the trace context in `parent`, if any."""
        context = None
        if parent is not None and parent.traceparent:
            carrier = {"traceparent": parent.traceparent}
            if parent.tracestate:
                carrier["tracestate"] = parent.tracestate
            context = _propagator.extract(carrier)
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    def process(self, meta: Metadata, message: object, agent: str) -> Span:
        """The span of an agent handling one message."""
        return self.start(
            f"process {type(message).__name__}",
            kind=SpanKind.CONSUMER,
            parent=meta,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": agent,
                "messaging.message.id": meta.id,
            },
        )

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        self.provider.shutdown()


def within(meta: Metadata, span: Span) -> Metadata:
    """`meta` with `span` as its trace context (for what the span causes)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    if "traceparent" not in carrier:
        return meta
    return msgspec.structs.replace(
        meta, traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate")
    )


def tracing_from_settings(settings: TelemetrySettings, *, node: str) -> Tracing | None:
    """The node's tracing as `[telemetry]` says, or None when traces are off.

    Raises:
        ConfigError: For `otlp` without the `otlp` extra installed.
    """
    if settings.traces == "none":
        return None
    resource = Resource.create({"service.name": settings.service_name, "service.instance.id": node})
    provider = TracerProvider(resource=resource)
    memory = None
    exporter: SpanExporter
    if settings.traces == "memory":
        exporter = memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.traces == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
                OTLPSpanExporter,
            )
        except ImportError as exc:
            reason = "OTLP export needs the otlp extra (pip install -e '.[otlp]')"
            raise ConfigError("telemetry.traces", reason) from exc
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    return Tracing(provider, memory)
