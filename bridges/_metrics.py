"""The node's Prometheus metrics.

Requests at the edges are recorded as they happen (a histogram per edge,
agent type and status). Everything else (restarts, queue depths, inference
tiers) is read from the live statistics when `/metrics` is scraped, so the
hot paths pay nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from inference import PoolStatistics
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
    """The node's registry: edge request histograms and live collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Histogram(
            "actorfleet_requests_seconds",
            "Requests answered at an edge, by edge, agent type and status.",
            ("edge", "agent_type", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._live = _Live()
        self.registry.register(self._live)

    def observe(self, edge: str, agent_type: str, status: str, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(edge, agent_type, status).observe(seconds)

    def render(self, snapshot: Snapshot) -> bytes:
        """The exposition text, with `snapshot` as the live part (one scrape at a time)."""
        self._live.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._live.snapshot = Snapshot(None, None)


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


def _pool_metrics(pool: PoolStatistics) -> Iterator[Metric]:
    tier = ["tier"]
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "queued": GaugeMetricFamily(
            "actorfleet_inference_queued", "Requests waiting for a tier.", labels=tier
        ),
        "in_flight": GaugeMetricFamily(
            "actorfleet_inference_in_flight", "Generations running on a tier.", labels=tier
        ),
        "slots": GaugeMetricFamily(
            "actorfleet_inference_slots", "Generations a tier runs at once.", labels=tier
        ),
        "admitted": CounterMetricFamily(
            "actorfleet_inference_admitted", "Requests admitted to a tier.", labels=tier
        ),
        "degraded_in": CounterMetricFamily(
            "actorfleet_inference_degraded",
            "Requests a tier took for a larger one.",
            labels=tier,
        ),
        "rejected": CounterMetricFamily(
            "actorfleet_inference_rejected", "Requests refused or shed.", labels=tier
        ),
        "timeouts": CounterMetricFamily(
            "actorfleet_inference_timeouts", "Requests past their deadline.", labels=tier
        ),
        "failures": CounterMetricFamily(
            "actorfleet_inference_failures", "Worker failures of a tier.", labels=tier
        ),
        "tokens": CounterMetricFamily(
            "actorfleet_inference_tokens", "Tokens generated by a tier.", labels=tier
        ),
    }
    breaker = GaugeMetricFamily(
        "actorfleet_inference_breaker",
        "A tier's breaker: 0 closed, 1 half-open, 2 open.",
        labels=tier,
    )
    for stats in pool.tiers:
        for field, family in families.items():
            family.add_metric([stats.name], getattr(stats, field))
        breaker.add_metric([stats.name], BREAKER_LEVEL[stats.breaker])
    yield from families.values()
    yield breaker
