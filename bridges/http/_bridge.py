"""The HTTP edge: a Litestar app served by uvicorn on the node's I/O loop.

* `POST /v1/agents/<type>`: the JSON body is validated into the agent's
  msgspec request type and asked of the type (here or over NATS); the reply
  comes back as JSON.
* `POST /v1/generate` and `POST /v1/generate/stream` (Server-Sent Events):
  the node's inference pool.
* OpenAPI 3.1 at `/schema/openapi.json`, from the msgspec types; its page
  (Swagger UI, on assets the node serves) at `/schema` and `/docs`.
* `/livez`, `/readyz`, `/healthz`, `/metrics` (see `bridges.http._health`).

Every failure is `application/problem+json` (RFC 9457) with the typed error's
code; nothing about the server's insides reaches a client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import time
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import uvicorn
from litestar import Litestar, Request, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent
from opentelemetry.trace import SpanKind

from actors import within
from bridges._seam import Cancelled, PoolClient
from bridges.http._asyncapi import asyncapi_routes
from bridges.http._auth import Authenticator, grant_of, remember, same_machine
from bridges.http._body import JsonBodyRequest, body_type
from bridges.http._dashboard import dashboard_routes
from bridges.http._docs import docs_routes, openapi_config
from bridges.http._erasure import erasure_route
from bridges.http._generate import generate_routes
from bridges.http._headers import request_metadata
from bridges.http._health import Health, health_routes
from bridges.http._host import Guard
from bridges.http._metrics import Metrics
from bridges.http._openai import document_openai, openai_routes
from bridges.http._problems import (
    PROBLEMS,
    ClientGone,
    on_error,
    status_of,
    unless_gone,
)
from bridges.http._schema import document_rules, reply_types, union_of
from bridges.http._server import bounded_protocol
from bridges.http._streams import (
    SSE_MEDIA_TYPE,
    SSE_RESPONSE,
    relay_agent_stream,
)
from bridges.nats._serving import request_types
from messages import Metadata, NotFound, RequestTimeout, Unavailable

if TYPE_CHECKING:
    from actors import Agent, Reply, Runtime
    from bridges._held import Held
    from config import HttpSettings

logger: Final = logging.getLogger("actorfleet.http")
T = TypeVar("T")

# The agent answers by the deadline; this covers the hop back.
HOP_MARGIN: Final = 0.5
SHUTDOWN_GRACE: Final = 5.0
"""Seconds a server may take to close, past `http.drain_timeout`."""
_SHOWN_TYPE: Final = 64  # of an unknown agent type, in its 404


class HttpBridge:
    """The node's HTTP servers and the app they serve.

    Args:
        runtime: The node's runtime (agents, transport, inference).
        settings: The `[http]` section.
        agents: The agent classes whose types get an endpoint and a schema.
        health: The node's health checks.
        metrics: The node's metrics.
        pool: The node's inference pool while it runs (the generation routes).
    """

    def __init__(
        self,
        runtime: Runtime,
        settings: HttpSettings,
        agents: Sequence[type[Agent]],
        *,
        health: Health,
        metrics: Metrics,
        pool: Held[PoolClient],
    ) -> None:
        self.runtime = runtime
        self._pool = pool
        self.settings = settings
        self.agents = list(agents)
        self.health = health
        self.metrics = metrics
        self.auth = Authenticator(settings)
        separate = settings.health_port != 0
        self.app = self._app(api=True, health=not separate)
        self.health_app = self._app(api=False, health=True) if separate else None
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        self.ports: list[int] = []
        self._journal_handler: logging.Handler | None = None
        # Answers awaited by requests in progress, failed if the drain runs out.
        self._in_flight: set[asyncio.Future[Any]] = set()

    # -- lifecycle (loop side) ---------------------------------------------

    async def start(self) -> None:
        """Bind and serve; a port that cannot be bound fails the start.

        Raises:
            Unavailable: If a port cannot be bound.
        """
        apps = [(self.app, self.settings.port)]
        if self.health_app is not None:
            apps.append((self.health_app, self.settings.health_port))
        try:
            for app, port in apps:
                await self._serve(app, port)
        except BaseException:
            await self.close()
            raise
        self._journal_handler = self.metrics.journal.attach()

    async def _serve(self, app: Litestar, port: int) -> None:
        try:
            sock = socket.create_server((self.settings.host, port), reuse_port=False)
        except OSError as exc:
            key = "http.health_port" if port == self.settings.health_port else "http.port"
            env = "" if key == "http.health_port" else " (AF_HTTP_PORT)"
            msg = (
                f"cannot listen on {self.settings.host}:{port}: {exc.strerror or exc};"
                f" set {key}{env} to a free port, or 0 to pick one"
            )
            raise Unavailable(msg) from exc
        config = uvicorn.Config(
            app,
            loop="none",
            http=bounded_protocol(
                header_timeout=self.settings.header_timeout,
                max_connections=self.settings.max_connections,
            ),
            lifespan="off",
            log_level="warning",
            access_log=False,
            # After the drain, what is still open (a stream) gets SHUTDOWN_GRACE more.
            timeout_graceful_shutdown=math.ceil(self.settings.drain_timeout + SHUTDOWN_GRACE),
        )
        server = uvicorn.Server(config)
        # What `Server.serve` does, in two halves: bound and listening once
        # `startup` returns, then serving in a task until told to exit.
        config.load()
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        task = asyncio.create_task(_serve_until_exit(server, sock))
        self._servers.append((server, task))
        self.ports.append(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, let requests in progress finish (`http.drain_timeout`), close.

        A request whose answer has not come when the drain runs out is
        answered 503 `unavailable` (the node is stopping); what is left
        after that (a stream) is cut when the servers close.
        """
        if self._journal_handler is not None:
            self.metrics.journal.detach(self._journal_handler)
            self._journal_handler = None
        for server, _task in self._servers:
            server.should_exit = True
        drain = self.settings.drain_timeout
        if self._servers and self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=drain)
        for answer in list(self._in_flight):
            if not answer.done():  # an error each: a raised error keeps its traceback
                answer.set_exception(
                    Unavailable("the node stopped before the answer came", retry_after=1.0)
                )
        for _server, task in self._servers:
            try:
                await asyncio.wait_for(task, drain + SHUTDOWN_GRACE)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("an HTTP server did not stop within %.0f s", drain + SHUTDOWN_GRACE)
            except Exception:
                logger.exception("an HTTP server failed while it stopped")
        self._servers.clear()

    def in_flight(self, answer: asyncio.Future[T]) -> asyncio.Future[T]:
        """`answer`, failed with `Unavailable` if the node stops before it comes.

        A task (a generation) cannot be failed from outside: it answers
        through a future of its own, and is cancelled once that is settled
        first (the drain ran out, the client left).
        """
        if isinstance(answer, asyncio.Task):
            answer = _through_future(answer)
        self._in_flight.add(answer)
        answer.add_done_callback(self._in_flight.discard)
        return answer

    @property
    def url(self) -> str:
        """The API's base URL."""
        host = self.settings.host
        port = self.ports[0] if self.ports else self.settings.port
        return f"http://{host}:{port}"

    @property
    def health_url(self) -> str:
        """The health endpoints' base URL."""
        if len(self.ports) > 1:
            return f"http://{self.settings.host}:{self.ports[1]}"
        return self.url

    def describe(self) -> str:
        """Where it listens."""
        if self.health_app is None:
            return f"serving {self.url}"
        return f"serving {self.url}, health on {self.health_url}"

    async def probe(self) -> str | None:
        """Why it cannot serve now (a server stopped), or None."""
        for (_server, task), port in zip(self._servers, self.ports, strict=True):
            if task.done():
                return f"the HTTP server on port {port} stopped"
        return None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` if a server stops without being closed (on the loop)."""
        for (server, task), port in zip(self._servers, self.ports, strict=True):

            def stopped(
                _task: asyncio.Task[None], server: uvicorn.Server = server, port: int = port
            ) -> None:
                if not server.should_exit:
                    callback(f"the HTTP server on port {port} stopped")

            task.add_done_callback(stopped)

    # -- the app ---------------------------------------------------------------

    def _app(self, *, api: bool, health: bool) -> Litestar:
        handlers: list[Any] = []
        if api:
            handlers += [self._agent_route(a) for a in self.agents if request_types(a)]
            handlers += [
                self._agent_stream_route(a)
                for a in self.agents
                if request_types(a) and a.chunk_type is not None
            ]
            handlers += generate_routes(self)
            handlers += openai_routes(self)
            handlers += self._unknown_agent_routes()
            handlers += docs_routes()
            handlers += asyncapi_routes(self)
            handlers += dashboard_routes(
                self.health, self.metrics, self.guards(), open_edge=self.auth.open
            )
            erase = erasure_route(self, self.agents)
            if erase is not None:
                handlers.append(erase)
        if health:
            handlers += health_routes(self.health, self.metrics)
        app = Litestar(
            route_handlers=handlers,
            exception_handlers={Exception: on_error},
            request_class=JsonBodyRequest,
            request_max_body_size=self.settings.max_body,
            openapi_config=openapi_config() if api else None,
            logging_config=None,
            debug=False,
        )
        if api:
            document_rules(app, [t for a in self.agents for t in request_types(a)])
            document_openai(app)
        return app

    def guards(self) -> list[Guard]:
        """Authentication, unless the edge is open (a closure: Litestar copies guards).

        Coroutines, since Litestar runs a plain function guard on a worker
        thread: a thread hop per request, for a check that takes a microsecond.
        """
        auth = self.auth
        if auth.open:

            async def loopback_only(
                connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
            ) -> None:
                same_machine(connection, _)

            return [loopback_only]

        async def guard(
            connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
        ) -> None:
            remember(connection, auth.authenticate(connection.headers))

        return [guard]

    def acting(
        self, request: Request[Any, Any, Any], agent_type: str, message: Any, meta: Metadata
    ) -> Metadata:
        """`meta` with the principal `message` is asked for by this request's caller.

        Raises:
            Forbidden: The caller may not ask `agent_type` this.
        """
        return self.auth.acting(grant_of(request), agent_type, message, meta)

    def metadata(self, request: Request[Any, Any, Any]) -> Metadata:
        """A request's metadata from its headers.

        Raises:
            BadRequest: A header has a bad value.
        """
        return request_metadata(
            request.headers,
            default_timeout=self.settings.default_timeout,
            max_timeout=self.settings.max_timeout,
        )

    def _agent_route(self, agent_class: type[Agent]) -> Any:
        agent_type = agent_class.agent_type
        accepted = request_types(agent_class)
        replies = reply_types(agent_class, accepted)

        async def ask(request: Request[Any, Any, Any], data: Any) -> Any:
            return await self.observed(
                agent_type,
                request,
                lambda meta: self.ask(
                    request, agent_type, data, self.acting(request, agent_type, data, meta)
                ),
            )

        ask.__annotations__ = {
            "request": Request[Any, Any, Any],
            "data": JSONBody[union_of(accepted)],  # type: ignore[misc] # built at run time
            "return": union_of(replies) if replies else Any,
        }
        ask.__doc__ = (agent_class.__doc__ or f"Ask an agent of type {agent_type}.").strip()
        return post(
            f"/v1/agents/{agent_type}",
            name=f"agent-{agent_type}",
            operation_id=f"ask_{agent_type.replace('-', '_')}",
            summary=f"Ask the {agent_type} agent",
            tags=["agents"],
            status_code=200,
            responses=PROBLEMS,
            guards=self.guards(),
            opt=body_type(union_of(accepted)),
        )(ask)

    def _unknown_agent_routes(self) -> list[Any]:
        """404s that say which agent types there are (and which of them stream)."""
        served = sorted(a.agent_type for a in self.agents if request_types(a))
        streaming = sorted(
            a.agent_type for a in self.agents if request_types(a) and a.chunk_type is not None
        )

        def unknown(agent_type: str) -> NotFound:
            shown = agent_type[:_SHOWN_TYPE]
            return NotFound(f"no agent type {shown!r} here; agent types: {', '.join(served)}")

        async def ask_unknown(agent_type: FromPath[str]) -> None:
            raise unknown(agent_type)

        async def stream_unknown(agent_type: FromPath[str]) -> None:
            if agent_type not in served:
                raise unknown(agent_type)
            msg = (
                f"{agent_type} does not stream its replies (POST /v1/agents/{agent_type});"
                f" agent types that stream: {', '.join(streaming) or 'none'}"
            )
            raise NotFound(msg)

        options: dict[str, Any] = {
            "guards": self.guards(),
            "include_in_schema": False,
            "status_code": 200,
        }
        return [
            post("/v1/agents/{agent_type:str}", name="agent-unknown", **options)(ask_unknown),
            post("/v1/agents/{agent_type:str}/stream", name="agent-unknown-stream", **options)(
                stream_unknown
            ),
        ]

    def _agent_stream_route(self, agent_class: type[Agent]) -> Any:
        agent_type = agent_class.agent_type
        record = self.metrics.recorder("http-stream", agent_type)

        async def ask_stream(request: Request[Any, Any, Any], data: Any) -> ServerSentEvent:
            meta = self.acting(request, agent_type, data, self.metadata(request))
            started = time.perf_counter()
            return ServerSentEvent(
                relay_agent_stream(
                    self.runtime,
                    agent_type,
                    data,
                    meta,
                    record=lambda status: record(str(status), time.perf_counter() - started),
                )
            )

        ask_stream.__annotations__ = {
            "request": Request[Any, Any, Any],
            "data": JSONBody[union_of(request_types(agent_class))],  # type: ignore[misc]
            "return": ServerSentEvent,
        }
        return post(
            f"/v1/agents/{agent_type}/stream",
            name=f"agent-{agent_type}-stream",
            operation_id=f"ask_{agent_type.replace('-', '_')}_stream",
            summary=f"Ask the {agent_type} agent, its reply streamed as Server-Sent Events",
            description=f"`chunk` events carry `{agent_class.chunk_type.__name__}`s."
            if agent_class.chunk_type
            else None,
            tags=["agents"],
            status_code=200,
            media_type=SSE_MEDIA_TYPE,
            responses={200: SSE_RESPONSE, **PROBLEMS},
            guards=self.guards(),
            opt=body_type(union_of(request_types(agent_class))),
        )(ask_stream)

    async def observed(
        self,
        agent_type: str,
        request: Request[Any, Any, Any],
        work: Callable[[Metadata], typing.Awaitable[Any]],
    ) -> Any:
        """Run `work` with the request's metadata, inside its server span; record it."""
        started = time.perf_counter()
        status = 200
        span = None
        try:
            meta = self.metadata(request)
            tracing = self.runtime.tracing
            if tracing is not None:
                span = tracing.start(
                    f"{request.method} {request.url.path}",
                    kind=SpanKind.SERVER,
                    parent=meta,
                    attributes={
                        "http.request.method": request.method,
                        "url.path": request.url.path,
                        "http.route": request.url.path,
                    },
                )
                meta = within(meta, span)
            return await work(meta)
        except BaseException as error:
            status = status_of(error)
            raise
        finally:
            if span is not None:
                span.set_attribute("http.response.status_code", status)
                span.end()
            self.metrics.observe("http", agent_type, str(status), time.perf_counter() - started)

    async def ask(
        self, request: Request[Any, Any, Any], agent_type: str, message: Any, meta: Metadata
    ) -> Any:
        reply = self.runtime.ref(agent_type).ask_async(
            message, message_id=meta.id, priority=meta.priority, sender="http", cause=meta
        )
        answer = self.in_flight(_as_future(reply))
        budget = max(meta.deadline - time.time(), 0) + HOP_MARGIN
        try:
            return await unless_gone(request, answer, budget=budget)
        except ClientGone:
            # Still queued, the agent skips it; running, its answer is dropped.
            reply.fail(Cancelled("the HTTP client went away"))
            raise
        except TimeoutError:
            reply.fail(RequestTimeout("no answer before the deadline"))
            msg = f"{agent_type} did not answer before the deadline"
            raise RequestTimeout(msg) from None

    # -- generations --------------------------------------------------------

    def pool(self) -> PoolClient:
        """The inference pool running now.

        Raises:
            Unavailable: If the node runs none (now).
        """
        return self._pool.get()


async def _serve_until_exit(server: uvicorn.Server, sock: socket.socket) -> None:
    await server.main_loop()
    await server.shutdown(sockets=[sock])


def _through_future(task: asyncio.Task[T]) -> asyncio.Future[T]:
    """A future settled as `task` ends; settled (or cancelled) first, it cancels `task`."""
    outer: asyncio.Future[T] = task.get_loop().create_future()

    def relay(done: asyncio.Task[T]) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
        elif (error := done.exception()) is not None:
            outer.set_exception(error)
        else:
            outer.set_result(done.result())

    task.add_done_callback(relay)
    outer.add_done_callback(lambda _outer: task.cancel())  # a no-op once the task is done
    return outer


def _as_future(reply: Reply[Any]) -> asyncio.Future[Any]:
    """A loop future settled (thread-safely) when `reply` is."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settled(done: Reply[Any]) -> None:
        loop.call_soon_threadsafe(functools.partial(_settle, future, done))

    reply.add_done_callback(settled)
    return future


def _settle(future: asyncio.Future[Any], reply: Reply[Any]) -> None:
    if future.done():
        return
    outcome = reply.result()
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


HttpFactory = Callable[[], HttpBridge]
