"""What the generation and erasure routes need of the HTTP bridge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import asyncio

    from litestar import Request
    from litestar.connection import ASGIConnection
    from litestar.handlers import BaseRouteHandler

    from bridges._seam import PoolClient
    from bridges.http._metrics import Metrics
    from messages import Metadata

T = TypeVar("T")
Guard = Callable[["ASGIConnection[Any, Any, Any, Any]", "BaseRouteHandler"], Awaitable[None]]
"""A route guard: a coroutine function (Litestar runs a plain function on a worker thread)."""


class Edge(Protocol):
    """The HTTP bridge, as a route module sees it (all on the loop)."""

    @property
    def metrics(self) -> Metrics:
        """The node's metrics."""
        ...

    def guards(self) -> list[Guard]:
        """The checks every route runs first (authentication)."""
        ...

    def acting(
        self, request: Request[Any, Any, Any], agent_type: str, message: Any, meta: Metadata
    ) -> Metadata:
        """`meta` with the principal the request's caller acts as (raises `Forbidden`)."""
        ...

    def metadata(self, request: Request[Any, Any, Any]) -> Metadata:
        """A request's metadata from its headers (raises `BadRequest`)."""
        ...

    def in_flight(self, answer: asyncio.Future[T]) -> asyncio.Future[T]:
        """`answer`, failed with `Unavailable` if the node stops before it comes."""
        ...

    def pool(self) -> PoolClient:
        """The inference pool running now (raises `Unavailable`)."""
        ...

    async def observed(
        self,
        agent_type: str,
        request: Request[Any, Any, Any],
        work: Callable[[Metadata], Awaitable[Any]],
    ) -> Any:
        """Run `work` with the request's metadata, inside its span; record it."""
        ...

    async def ask(
        self, request: Request[Any, Any, Any], agent_type: str, message: Any, meta: Metadata
    ) -> Any:
        """Ask an agent of `agent_type`; leaving early cancels the call."""
        ...
