"""The node's Prometheus metrics.

Requests at the edges are recorded as they happen (a histogram per edge,
agent type and status). Everything else (restarts, queue depths, inference
tiers) is read from the live statistics when `/metrics` is scraped, so the
hot paths pay nothing for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

import msgspec
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridges.http._journal import Journal
from messages import ConfigError

if TYPE_CHECKING:
    from config import TelemetrySettings
    from inference import PoolStatistics, TierStatistics
    from supervisors import SupervisorStatistics

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BREAKER_LEVEL: Final = {"closed": 0, "half_open": 1, "open": 2}
# One export reads the live statistics once for all its instruments.
SNAPSHOT_REUSE_S: Final = 1.0


class Snapshot:
    """The live statistics one scrape reports."""

    __slots__ = ("pool", "tree")

    def __init__(self, tree: SupervisorStatistics | None, pool: PoolStatistics | None) -> None:
        self.tree = tree
        self.pool = pool


class _Live:
    """A collector over the snapshot taken for the scrape in progress."""

    def __init__(self) -> None:
        self.snapshot = Snapshot(None, None)

    def collect(self) -> Iterator[Metric]:
        if self.snapshot.tree is not None:
            yield from _tree_metrics(self.snapshot.tree)
        if self.snapshot.pool is not None:
            yield from _pool_metrics(self.snapshot.pool)


class Metrics:
    """The node's registry: edge request histograms and live collectors.

    Args:
        meter: An OpenTelemetry meter to report the same figures to (OTLP,
            console), when `[telemetry] metrics` is on.
        live: Reads the live statistics (blocking; the meter's export
            thread calls it).

    Attributes:
        journal: The last events and problems (failed requests among them).
    """

    def __init__(
        self, *, meter: Meter | None = None, live: Callable[[], Snapshot] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Histogram(
            "actorfleet_requests_seconds",
            "Requests answered at an edge, by edge, agent type and status.",
            ("edge", "agent_type", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tool_calls = Histogram(
            "actorfleet_tool_calls_seconds",
            "Tool calls made by agents, by agent type, tool and outcome.",
            ("agent_type", "tool", "outcome"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.journal = Journal()
        self._live = _Live()
        self.registry.register(self._live)
        self._otel_requests = None
        if meter is not None:
            self._otel_requests = meter.create_histogram(
                "actorfleet.request.duration",
                unit="s",
                description="Requests answered at an edge.",
                explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
            )
            if live is not None:
                _observe_live(meter, _CachedSnapshot(live))

    def recorder(self, edge: str, agent_type: str) -> Callable[[str, float], None]:
        """`record(status, seconds)` for one edge and type, its label sets kept at hand."""
        children: dict[str, Any] = {}
        otel = self._otel_requests
        journal, source = self.journal, f"{edge} {agent_type}"

        def record(status: str, seconds: float) -> None:
            child = children.get(status)
            if child is None:
                child = children[status] = self.requests.labels(edge, agent_type, status)
            child.observe(seconds)
            if server_side(status):
                journal.problem("request", source, f"answered {status} in {seconds * 1e3:.1f} ms")
            if otel is not None:
                otel.record(seconds, {"edge": edge, "agent_type": agent_type, "status": status})

        return record

    def observe(self, edge: str, agent_type: str, status: str, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(edge, agent_type, status).observe(seconds)
        if server_side(status):
            self.journal.problem(
                "request", f"{edge} {agent_type}", f"answered {status} in {seconds * 1e3:.1f} ms"
            )
        if self._otel_requests is not None:
            self._otel_requests.record(
                seconds, {"edge": edge, "agent_type": agent_type, "status": status}
            )

    def request_totals(self) -> list[RequestTotals]:
        """The requests answered since start, per edge and agent type (all statuses)."""
        totals: dict[tuple[str, str], RequestTotals] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                labels = sample.labels
                key = (labels["edge"], labels["agent_type"])
                found = totals.get(key)
                if found is None:
                    found = totals[key] = RequestTotals(
                        edge=key[0], agent_type=key[1], buckets=[0] * (len(LATENCY_BUCKETS) + 1)
                    )
                _add_sample(found, sample.name, labels, sample.value)
        return sorted(totals.values(), key=lambda t: (t.agent_type, t.edge))

    def observe_tool(self, agent_type: str, tool: str, outcome: str, seconds: float) -> None:
        """Record one tool call (from the calling agent's thread)."""
        self.tool_calls.labels(agent_type, tool, outcome).observe(seconds)

    def render(self, snapshot: Snapshot) -> bytes:
        """The exposition text, with `snapshot` as the live part (one scrape at a time)."""
        self._live.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._live.snapshot = Snapshot(None, None)


def failed(status: str) -> bool:
    """Whether an edge's status is a failure (not NATS's `ok`, not an HTTP 2xx)."""
    return status != "ok" and not status.startswith("2")


# NATS error codes that say the node failed, not the caller (as HTTP's 5xx do).
_SERVER_SIDE_CODES: Final = frozenset({"internal", "unavailable", "timeout"})


def server_side(status: str) -> bool:
    """Whether a failure is the node's (an HTTP 5xx, a NATS internal error or timeout).

    Only these go to the journal's problems: a caller's own mistakes (4xx)
    are counted in the metrics, and would push the node's problems out.
    """
    return status.startswith("5") or status in _SERVER_SIDE_CODES


class RequestTotals(msgspec.Struct, kw_only=True):
    """An edge's requests of one agent type since start, for rates and quantiles.

    Attributes:
        edge: `http`, `http-stream` or `nats`.
        agent_type: The agent type (or `generate`, `openai`).
        count: Requests answered.
        failed: Of them, answered with a failure.
        seconds: Their time, summed.
        buckets: Cumulative counts at each of `LATENCY_BUCKETS`, then +Inf.
    """

    edge: str
    agent_type: str
    count: int = 0
    failed: int = 0
    seconds: float = 0.0
    buckets: list[int]


_BUCKET_INDEX: Final = {repr(float(b)): i for i, b in enumerate(LATENCY_BUCKETS)}


def _add_sample(totals: RequestTotals, name: str, labels: dict[str, str], value: float) -> None:
    if name.endswith("_count"):
        totals.count += int(value)
        if failed(labels["status"]):
            totals.failed += int(value)
    elif name.endswith("_sum"):
        totals.seconds += value
    elif name.endswith("_bucket"):
        index = _BUCKET_INDEX.get(repr(float(labels["le"])), len(LATENCY_BUCKETS))
        totals.buckets[index] += int(value)


class _CachedSnapshot:
    """The live statistics, read at most once per `SNAPSHOT_REUSE_S` for all instruments."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._at = -SNAPSHOT_REUSE_S
        self._snapshot = Snapshot(None, None)

    def __call__(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= SNAPSHOT_REUSE_S:
                self._snapshot = self._read()
                self._at = now
            return self._snapshot


def _child_observer(
    snapshot: Callable[[], Snapshot], field: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """Observations of one child statistic, per supervisor and child."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        tree = snapshot().tree
        for supervisor in _walk(tree) if tree is not None else ():
            for child in supervisor.children:
                value = getattr(child, field)
                if value is not None:
                    yield Observation(value, {"supervisor": supervisor.name, "child": child.id})

    return observe


def _tier_observer(
    snapshot: Callable[[], Snapshot], read: Callable[[TierStatistics], float]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """Observations of one tier statistic, per tier."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        pool = snapshot().pool
        for tier in pool.tiers if pool is not None else ():
            yield Observation(read(tier), {"tier": tier.name})

    return observe


def _observe_live(meter: Meter, snapshot: Callable[[], Snapshot]) -> None:
    def children(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        return _child_observer(snapshot, field)

    def tiers(read: Callable[[TierStatistics], float]) -> Callable[..., Iterable[Observation]]:
        return _tier_observer(snapshot, read)

    meter.create_observable_counter(
        "actorfleet.child.restarts", [children("restarts")], description="Restarts of a child."
    )
    meter.create_observable_gauge(
        "actorfleet.mailbox.depth", [children("queue_depth")], description="Requests waiting."
    )
    gauges: dict[str, Callable[[TierStatistics], float]] = {
        "queued": lambda t: t.queued,
        "in_flight": lambda t: t.in_flight,
        "breaker": lambda t: BREAKER_LEVEL[t.breaker],
    }
    counters: dict[str, Callable[[TierStatistics], float]] = {
        "admitted": lambda t: t.admitted,
        "degraded": lambda t: t.degraded_in,
        "rejected": lambda t: t.rejected,
        "tokens": lambda t: t.tokens,
    }
    for name, read in gauges.items():
        meter.create_observable_gauge(f"actorfleet.inference.{name}", [tiers(read)])
    for name, read in counters.items():
        meter.create_observable_counter(f"actorfleet.inference.{name}", [tiers(read)])


def _tree_metrics(tree: SupervisorStatistics) -> Iterator[Metric]:
    labels = ["supervisor", "child"]
    up = GaugeMetricFamily("actorfleet_child_up", "1 while a child runs.", labels=labels)
    restarts = CounterMetricFamily(
        "actorfleet_child_restarts", "Restarts of a child since start.", labels=labels
    )
    queued = GaugeMetricFamily(
        "actorfleet_mailbox_depth", "Requests waiting in an agent's mailbox.", labels=labels
    )
    window = GaugeMetricFamily(
        "actorfleet_supervisor_intensity_used",
        "Share of a supervisor's restart intensity used in its window.",
        labels=["supervisor"],
    )
    for supervisor in _walk(tree):
        intensity = supervisor.intensity
        window.add_metric([supervisor.name], intensity.restarts / max(intensity.max_restarts, 1))
        for child in supervisor.children:
            key = [supervisor.name, child.id]
            up.add_metric(key, 1.0 if child.status == "running" else 0.0)
            restarts.add_metric(key, child.restarts)
            if child.queue_depth is not None:
                queued.add_metric(key, child.queue_depth)
    yield from (up, restarts, queued, window)


def _walk(tree: SupervisorStatistics) -> Iterator[SupervisorStatistics]:
    yield tree
    for child in tree.children:
        if child.supervisor is not None:
            yield from _walk(child.supervisor)


# The tier statistics shown per tier: field, metric name, kind, help.
_TIER_FAMILIES: Final = (
    ("queued", "actorfleet_inference_queued", GaugeMetricFamily, "Requests waiting for a tier."),
    ("in_flight", "actorfleet_inference_in_flight", GaugeMetricFamily, "Generations running."),
    ("slots", "actorfleet_inference_slots", GaugeMetricFamily, "Generations a tier runs at once."),
    ("admitted", "actorfleet_inference_admitted", CounterMetricFamily, "Requests admitted."),
    (
        "degraded_in",
        "actorfleet_inference_degraded",
        CounterMetricFamily,
        "Requests a tier took for a larger one.",
    ),
    ("rejected", "actorfleet_inference_rejected", CounterMetricFamily, "Requests refused or shed."),
    ("timeouts", "actorfleet_inference_timeouts", CounterMetricFamily, "Requests past deadline."),
    ("failures", "actorfleet_inference_failures", CounterMetricFamily, "Worker failures."),
    ("tokens", "actorfleet_inference_tokens", CounterMetricFamily, "Tokens generated."),
)


def _pool_metrics(pool: PoolStatistics) -> Iterator[Metric]:
    families = [
        (field, kind(name, text, labels=["tier"])) for field, name, kind, text in _TIER_FAMILIES
    ]
    breaker = GaugeMetricFamily(
        "actorfleet_inference_breaker",
        "A tier's breaker: 0 closed, 1 half-open, 2 open.",
        labels=["tier"],
    )
    for stats in pool.tiers:
        for field, family in families:
            family.add_metric([stats.name], getattr(stats, field))
        breaker.add_metric([stats.name], BREAKER_LEVEL[stats.breaker])
    yield from (family for _, family in families)
    yield breaker


def meter_from_settings(
    settings: TelemetrySettings, *, node: str
) -> tuple[MeterProvider, InMemoryMetricReader | None] | None:
    """The node's meter provider as `[telemetry] metrics` says, or None when off.

    Raises:
        ConfigError: For `otlp` without the `otlp` extra installed.
    """
    if settings.metrics == "none":
        return None
    memory = None
    reader: MetricReader
    if settings.metrics == "memory":
        reader = memory = InMemoryMetricReader()
    else:
        interval_ms = settings.metrics_interval * 1e3
        exporter: MetricExporter
        if settings.metrics == "console":
            exporter = ConsoleMetricExporter()
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
                    OTLPMetricExporter,
                )
            except ImportError as exc:
                reason = "OTLP export needs the otlp extra (pip install -e '.[otlp]')"
                raise ConfigError("telemetry.metrics", reason) from exc
            exporter = OTLPMetricExporter(endpoint=settings.otlp_metrics_endpoint)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
    resource = Resource.create({"service.name": settings.service_name, "service.instance.id": node})
    return MeterProvider(metric_readers=[reader], resource=resource), memory
