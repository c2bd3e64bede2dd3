"""`/dashboard`: the node's live page, served by the node itself.

The page (`dashboard/index.html`, its script and its styles, shipped in
the package: no build step, nothing fetched from elsewhere) polls
`/dashboard/state` every `POLL_INTERVAL` seconds: the supervision tree, the
inference tiers, the requests answered per edge and agent type (cumulative:
the page turns two polls into rates and latency quantiles), readiness, and
the journal's last events and problems.

The page itself holds no data and needs no credential; the state does. On
an open edge (no keys, loopback) it is served to this machine only, as every
route is; otherwise it needs an admin credential, which the page asks for
and keeps in the tab's `sessionStorage`. The page is sent with a strict
Content-Security-Policy: its own script and styles only, no framing.
"""

from __future__ import annotations

import time
from importlib import metadata, resources
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.params import FromPath
from litestar.response import Redirect

from bridges.http._auth import grant_of
from bridges.http._metrics import LATENCY_BUCKETS, RequestTotals
from inference import PoolStatistics
from messages import Forbidden, NotFound, Scope
from supervisors import SupervisorStatistics

if TYPE_CHECKING:
    from bridges.http._health import Health
    from bridges.http._host import Guard
    from bridges.http._journal import Happening
    from bridges.http._metrics import Metrics

DASHBOARD: Final = "/dashboard"
POLL_INTERVAL: Final = 1.0
"""Seconds between the page's polls of its state."""
_ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DashboardState(msgspec.Struct, frozen=True, kw_only=True):
    """What the page shows, read at once.

    Attributes:
        node: The node's name.
        version: actorfleet's version.
        at: When it was read (seconds since the epoch).
        interval: Seconds the page waits between polls.
        ready: Whether the node is ready (as `/readyz`).
        reason: Why not, or `ready`.
        tree: The supervision tree (None if the root does not answer).
        inference: The pool's tiers, if the node runs one.
        requests: Requests answered since start per edge and agent type.
        latency_buckets: The upper bounds (seconds) of `requests`' buckets.
        events: The last events, oldest first.
        problems: The last warnings, errors and failed requests, oldest first.
    """

    node: str
    version: str
    at: float
    interval: float
    ready: bool
    reason: str
    tree: SupervisorStatistics | None
    inference: PoolStatistics | None
    requests: list[RequestTotals]
    latency_buckets: tuple[float, ...]
    events: list[Happening]
    problems: list[Happening]


def _asset(name: str) -> bytes:
    return resources.files("bridges.http").joinpath("dashboard", name).read_bytes()


def dashboard_routes(
    health: Health, metrics: Metrics, guards: list[Guard], *, open_edge: bool
) -> list[Any]:
    """The page, its assets, its state, and `/` redirecting to the page.

    Args:
        health: The node's health checks (tree, readiness, pool).
        metrics: The node's metrics (request totals and the journal).
        guards: The edge's authentication (or, open, its same-machine check).
        open_edge: Whether the edge asks for no credential.
    """
    page = _asset("index.html").replace(b"{{needs_key}}", b"false" if open_edge else b"true")
    assets = {name: (_asset(name), media) for name, media in _ASSETS.items()}
    version = metadata.version("actorfleet")

    @get("/", include_in_schema=False, status_code=302)
    async def root() -> Redirect:
        return Redirect(DASHBOARD)

    @get(DASHBOARD, include_in_schema=False, media_type=MediaType.HTML)
    async def dashboard() -> Response[bytes]:
        return Response(page, media_type=MediaType.HTML, headers=_SECURITY_HEADERS)

    @get(f"{DASHBOARD}/assets/{{name:str}}", include_in_schema=False)
    async def asset(name: FromPath[str]) -> Response[bytes]:
        found = assets.get(name)
        if found is None:
            msg = "the dashboard has no such asset"
            raise NotFound(msg)
        body, media = found
        return Response(body, media_type=media, headers=_SECURITY_HEADERS)

    @get(f"{DASHBOARD}/state", include_in_schema=False, guards=guards)
    async def state(request: Request[Any, Any, Any]) -> Response[bytes]:
        grant = grant_of(request)
        if grant is not None and grant.principal.scope != Scope.ADMIN:
            msg = "the dashboard needs an admin credential"
            raise Forbidden(msg)
        ready, reason = await health.ready()
        shown = DashboardState(
            node=health.node,
            version=version,
            at=time.time(),
            interval=POLL_INTERVAL,
            ready=ready,
            reason=reason,
            tree=await health.tree(),
            inference=health.pool(),
            requests=metrics.request_totals(),
            latency_buckets=LATENCY_BUCKETS,
            events=metrics.journal.events(),
            problems=metrics.journal.problems(),
        )
        return Response(
            msgspec.json.encode(shown),
            media_type=MediaType.JSON,
            headers={"Cache-Control": "no-store"},
        )

    return [root, dashboard, asset, state]
