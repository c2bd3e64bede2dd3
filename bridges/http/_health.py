"""Health of a node: liveness, readiness and the live tree as `application/health+json`.

`/healthz` follows the IETF draft "Health Check Response Format for HTTP
APIs": a top-level `status` (`pass`, `warn`, `fail`) and `checks` keyed
`<component>:<measurement>`, each a list of findings. The supervision tree
itself rides along under `tree`, the inference pool under `inference`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import MediaType, Response, get

from bridges._held import Held, Resources
from bridges._seam import PoolClient
from bridges.http._metrics import CONTENT_TYPE, Metrics, Snapshot
from bridges.nats._bridge import ConnectionState, NatsBridge
from inference import PoolStatistics

if TYPE_CHECKING:
    from supervisors import ChildStatistics, SupervisorStatistics

HEALTH_JSON: Final = "application/health+json"
OK: Final = 200
DOWN: Final = 503
# /livez must answer fast: a tree that takes longer than this is not live.
TREE_TIMEOUT: Final = 1.0


class Status(enum.StrEnum):
    """A finding's verdict; the report's is the worst of them."""

    PASS = "pass"  # noqa: S105 - a health verdict, not a password
    WARN = "warn"
    FAIL = "fail"


_RANK: Final = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


class Check(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One finding of a check."""

    componentId: str  # noqa: N815 - the format's field name
    componentType: str  # noqa: N815
    status: Status
    observedValue: Any = None  # noqa: N815
    observedUnit: str | None = None  # noqa: N815
    output: str | None = None
    time: str = ""


class Report(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The whole `/healthz` document."""

    status: Status
    serviceId: str  # noqa: N815 - the format's field name
    description: str
    checks: dict[str, list[Check]]
    tree: SupervisorStatistics | None = None
    inference: PoolStatistics | None = None
    output: str | None = None


class Health:
    """Reads the node's state for the health endpoints (on the I/O loop).

    Args:
        node: The node's name (the report's `serviceId`).
        tree: Returns the live supervision tree (blocks: run off the loop).
        needs_inference: Whether agents need a model tier to be up to be ready.
        needs_nats: Whether the node is configured to use NATS.
        nats: The node's NATS bridge while it runs.
        pool: The node's inference pool while it runs.
        resources: What the node holds open (state store, audit log).
        required: The ones it cannot serve without, as (child id, check
            name): each must be open and answer its probe, or the node is
            not ready and `/healthz` fails.
    """

    def __init__(
        self,
        node: str,
        tree: Callable[[], SupervisorStatistics],
        *,
        needs_inference: bool,
        needs_nats: bool,
        nats: Held[NatsBridge],
        pool: Held[PoolClient],
        resources: Resources,
        required: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.node = node
        self._tree = tree
        self._nats = nats
        self._pool = pool
        self.needs_inference = needs_inference
        self.needs_nats = needs_nats
        self.resources = resources
        self.required = tuple(required)

    async def tree(self) -> SupervisorStatistics | None:
        """The live tree, or None if the root does not answer within `TREE_TIMEOUT`."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._tree), TREE_TIMEOUT)
        except (TimeoutError, RuntimeError):
            return None

    def pool(self) -> PoolStatistics | None:
        """The inference pool's statistics, if this node runs one."""
        client = self._pool.current
        return None if client is None else client.pool.statistics()

    async def live(self) -> tuple[bool, str]:
        """Whether the loop (this answering) and the root supervisor answer."""
        tree = await self.tree()
        if tree is None:
            return False, "the root supervisor does not answer"
        if tree.status != "running":
            return False, f"the root supervisor is {tree.status}"
        return True, "ok"

    async def report(self) -> Report:
        """Every check, the tree and the pool."""
        tree = await self.tree()
        pool = self.pool()
        stamp = _now()
        checks: dict[str, list[Check]] = {}
        if tree is None:
            checks["supervisor:responsive"] = [
                Check(
                    componentId="root",
                    componentType="supervisor",
                    status=Status.FAIL,
                    output="the root supervisor does not answer",
                    time=stamp,
                )
            ]
        else:
            checks["supervisor:children"] = list(_tree_checks(tree, stamp))
        if self.needs_nats:
            checks["nats:connection"] = [self._nats_check(stamp)]
        for component, check in self.required:
            problem = await self.resources.problem(component)
            checks[check] = [_datastore_check(component, problem, stamp)]
        if pool is not None:
            # One tier out while another serves is degraded (warn), not down.
            all_out = bool(pool.tiers) and all(t.breaker == "open" for t in pool.tiers)
            checks["inference:breaker"] = [
                Check(
                    componentId=t.name,
                    componentType="model-tier",
                    status=_tier_status(t.breaker, all_out=all_out),
                    observedValue=t.queued,
                    observedUnit="queued",
                    output=f"{t.backend} {t.model}, breaker {t.breaker}, "
                    f"{t.in_flight}/{t.slots} busy",
                    time=stamp,
                )
                for t in pool.tiers
            ]
        status = _worst(c.status for found in checks.values() for c in found)
        return Report(
            status=status,
            serviceId=self.node,
            description="actorfleet node",
            checks=checks,
            tree=tree,
            inference=pool,
        )

    async def ready(self) -> tuple[bool, str]:
        """Supervisors up, NATS connected, state (and a required audit log) open, a tier up."""
        reason = await self._not_ready()
        return (False, reason) if reason is not None else (True, "ready")

    async def _not_ready(self) -> str | None:
        tree = await self.tree()
        if tree is None or tree.status != "running":
            return "the root supervisor is not running"
        down = [s.name for s in _supervisors(tree) if s.status != "running"]
        if down:
            return f"supervisors not running: {', '.join(down)}"
        if self.needs_nats and not self._nats_ok():
            return "NATS is not connected"
        for component, _ in self.required:
            problem = await self.resources.problem(component)
            if problem is not None:
                return problem
        return self._inference_not_ready()

    def _inference_not_ready(self) -> str | None:
        if not self.needs_inference:
            return None
        pool = self.pool()
        if pool is None:
            return "the inference pool is not running"
        if all(t.breaker == "open" for t in pool.tiers):
            return "every model tier is out (breakers open)"
        return None

    def _nats_ok(self) -> bool:
        bridge = self._nats.current
        return bridge is not None and bridge.state is ConnectionState.CONNECTED

    def _nats_check(self, stamp: str) -> Check:
        bridge = self._nats.current
        if bridge is None:
            return Check(
                componentId="nats",
                componentType="component",
                status=Status.FAIL,
                output="no bridge",
                time=stamp,
            )
        ok = bridge.state is ConnectionState.CONNECTED
        return Check(
            componentId="nats",
            componentType="component",
            status=Status.PASS if ok else Status.FAIL,
            output=bridge.describe(),
            time=stamp,
        )


def _datastore_check(component: str, problem: str | None, stamp: str) -> Check:
    return Check(
        componentId=component,
        componentType="datastore",
        status=Status.PASS if problem is None else Status.FAIL,
        output=problem or "open",
        time=stamp,
    )


def _tree_checks(tree: SupervisorStatistics, stamp: str) -> list[Check]:
    found: list[Check] = []
    for supervisor in _supervisors(tree):
        used = supervisor.intensity.restarts
        found.extend(
            _child_check(supervisor.name, child, used, supervisor.intensity.max_restarts, stamp)
            for child in supervisor.children
        )
    return found


def _child_check(
    supervisor: str, child: ChildStatistics, used: int, limit: int, stamp: str
) -> Check:
    if child.status == "running":
        status = Status.WARN if used and used >= limit else Status.PASS
    elif child.status == "restarting":
        status = Status.WARN
    else:
        status = Status.PASS if child.restart != "permanent" else Status.FAIL
    parts = [child.status, f"{child.restarts} restarts"]
    if child.last_exit:
        parts.append(f"last exit {child.last_exit}")
    if child.detail:
        parts.append(child.detail)
    return Check(
        componentId=f"{supervisor}/{child.id}",
        componentType=child.kind,
        status=status,
        observedValue=child.restarts,
        observedUnit="restarts",
        output="; ".join(parts),
        time=stamp,
    )


def _supervisors(tree: SupervisorStatistics) -> list[SupervisorStatistics]:
    found = [tree]
    for child in tree.children:
        if child.supervisor is not None:
            found.extend(_supervisors(child.supervisor))
    return found


def _tier_status(breaker: str, *, all_out: bool) -> Status:
    if breaker == "closed":
        return Status.PASS
    return Status.FAIL if all_out else Status.WARN


def _worst(statuses: Any) -> Status:
    worst = Status.PASS
    for status in statuses:
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def health_routes(health: Health, metrics: Metrics) -> list[Any]:
    """`/livez`, `/readyz`, `/healthz` and `/metrics` (no API key: probes and scrapers)."""
    scrape = asyncio.Lock()

    @get("/livez", include_in_schema=False, media_type=MediaType.TEXT)
    async def livez() -> Response[str]:
        ok, why = await health.live()
        return Response(why + "\n", status_code=OK if ok else DOWN, media_type=MediaType.TEXT)

    @get("/readyz", include_in_schema=False, media_type=MediaType.TEXT)
    async def readyz() -> Response[str]:
        ok, why = await health.ready()
        return Response(why + "\n", status_code=OK if ok else DOWN, media_type=MediaType.TEXT)

    @get("/healthz", include_in_schema=False)
    async def healthz() -> Response[bytes]:
        report = await health.report()
        status = DOWN if report.status is Status.FAIL else OK
        return Response(msgspec.json.encode(report), status_code=status, media_type=HEALTH_JSON)

    @get("/metrics", include_in_schema=False)
    async def scrape_metrics() -> Response[bytes]:
        async with scrape:  # one scrape at a time: the live part is shared
            snapshot = Snapshot(await health.tree(), health.pool())
            body = await asyncio.to_thread(metrics.render, snapshot)
        return Response(body, media_type=CONTENT_TYPE)

    return [livez, readyz, healthz, scrape_metrics]
