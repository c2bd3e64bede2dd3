"""NatsBridge: the node's NATS connection, agent requests over it, and discovery.

Everything here runs on the node's I/O loop except the `Transport` methods
(`deliver`, `publish`), which actor threads call and which hop onto the loop.
A request from NATS reaches a local agent as a `Call` whose `Reply` hops back
to the loop when it is settled; the loop never waits on an actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
import nats
import nats.errors
from nats.micro.service import Service
from opentelemetry.trace import SpanKind

from actors import Call, Reply, Runtime, within
from bridges._outbox import Outbox
from bridges.nats._calls import request_reply, settle, stream_reply
from bridges.nats._connect import RateLimitedLog, connect
from bridges.nats._events import EventRouter
from bridges.nats._inbox import Inbox
from bridges.nats._serving import AgentEndpoint, event_types, headers_size
from bridges.nats._wire import (
    Subjects,
    check_token,
    encode_request,
    event_headers,
)
from config import redact_url
from messages import (
    AgentError,
    BadRequest,
    Event,
    Metadata,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    encode,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

    from actors import Agent
    from bridges._loop import IoLoop
    from bridges.nats._host import Observer
    from config import EventSettings, NatsSettings

logger: Final = logging.getLogger("actorfleet.nats")

# Between first-connect attempts while a server is not up yet (seconds).
_FIRST_RETRY_MIN: Final = 0.01
_FIRST_RETRY_MAX: Final = 0.1


class ConnectionState(enum.StrEnum):
    """Where the bridge's connection is."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DRAINING = "draining"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


class NatsBridge:
    """One node's link to NATS: serves its agents, reaches others, carries events.

    Args:
        runtime: The node's runtime; the bridge becomes its `transport` while connected.
        io: The node's I/O loop.
        settings: Connection settings.
        events: Event stream settings.
        agents: Agent classes this node serves over NATS.
        url: Server URL to use instead of `settings.url` (the embedded server's).
    """

    def __init__(
        self,
        runtime: Runtime,
        io: IoLoop,
        settings: NatsSettings,
        events: EventSettings,
        agents: Sequence[type[Agent]] = (),
        *,
        url: str | None = None,
        metrics: Observer | None = None,
    ) -> None:
        self.runtime = runtime
        self.io = io
        self.settings = settings
        self.url = url or settings.url
        self.metrics = metrics
        self._inbox: Inbox | None = None
        self.subjects = Subjects(settings.prefix)
        self.agents = tuple(agents)
        self.events = EventRouter(self, events)
        self.state = ConnectionState.CLOSED
        self.state_since = time.time()
        self.reconnects = 0
        self._nc: Client | None = None
        self._endpoints: dict[str, AgentEndpoint] = {}
        self._unwatch: list[typing.Callable[[], None]] = []
        self._max_payload = 1 << 20
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.outbox = Outbox(io)
        self._on_closed: list[typing.Callable[[], None]] = []
        self._last_error: Exception | None = None
        self._log = RateLimitedLog(logger)
        self._on_state: list[typing.Callable[[ConnectionState], None]] = []

    # -- lifecycle (loop side) ---------------------------------------------

    @property
    def nc(self) -> Client:
        """The live connection.

        Raises:
            Unavailable: If the bridge is not connected.
        """
        if self._nc is None:
            msg = "the NATS bridge is not connected"
            raise Unavailable(msg)
        return self._nc

    def describe(self) -> str:
        """One line for the supervision tree: state, where, which server, since when."""
        age = time.time() - self.state_since
        return (
            f"{self.state} {redact_url(self.url)}{self._server()} for {age:.1f} s,"
            f" {self.reconnects} reconnects"
        )

    def _server(self) -> str:
        """` (nats-server 2.10.1, JetStream)`: what answered, once connected."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return ""
        version = nc.connected_server_version
        # What the server said of itself in its INFO (nats-py keeps no public copy).
        info: dict[str, object] = getattr(nc, "_server_info", {}) or {}
        jetstream = "JetStream" if info.get("jetstream") else "no JetStream"
        return f" (nats-server {version.major}.{version.minor}.{version.patch}, {jetstream})"

    def on_state_change(self, callback: typing.Callable[[ConnectionState], None]) -> None:
        """Call `callback(state)` (on the loop) whenever the connection state changes."""
        self._on_state.append(callback)

    def on_closed(self, callback: typing.Callable[[], None]) -> None:
        """Call `callback()` (on the loop) if the connection is given up."""
        self._on_closed.append(callback)

    def on_lost(self, callback: typing.Callable[[str], None]) -> None:
        """Call `callback(reason)` (on the loop) if the connection is given up (a `Resource`)."""
        self.on_closed(lambda: callback("the NATS connection was closed"))

    async def probe(self) -> str | None:
        """Why the bridge cannot serve now, or None while it is connected."""
        if self.state is ConnectionState.CONNECTED:
            return None
        return f"NATS is {self.state}"

    async def start(self) -> None:
        """Connect, set up the event streams, serve the agents.

        Raises:
            Unavailable: If no server answers within the connect timeout.
        """
        self._set_state(ConnectionState.CONNECTING)
        s = self.settings
        try:
            self._nc = await asyncio.wait_for(self._first_connection(), s.connect_timeout)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            self._set_state(ConnectionState.CLOSED)
            reason = self._last_error or exc
            why = str(reason) or type(reason).__name__
            msg = f"cannot connect to NATS at {redact_url(self.url)}: {why}"
            raise Unavailable(msg) from None
        self._max_payload = self._nc.max_payload
        self._set_state(ConnectionState.CONNECTED)
        self.outbox.start()
        try:
            await self.events.start()
            for agent_class in self.agents:
                await self._serve(agent_class)
        except BaseException:
            await self.close()
            raise
        self.runtime.prefer_local = s.prefer_local
        self.runtime.transport = self

    async def _first_connection(self) -> Client:
        """Connect, trying again until the caller's timeout, whatever the reconnect policy.

        The reconnect settings are for a connection that was up; a server
        that is not up yet at start (restarting, still booting) is waited
        for, `nats.connect_timeout` at most.
        """
        s = self.settings
        while True:
            try:
                return await connect(
                    self.url.split(","),
                    settings=s,
                    name=self.runtime.node,
                    connect_timeout=max(1, math.ceil(s.connect_timeout)),
                    reconnect_time_wait=s.reconnect_wait,
                    # nats-py reads 0 as "forever"; here 0 means "never reconnect".
                    allow_reconnect=s.max_reconnect_attempts != 0,
                    max_reconnect_attempts=s.max_reconnect_attempts,
                    drain_timeout=max(1, math.ceil(s.drain_timeout)),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_connection_closed,
                )
            except (OSError, nats.errors.Error) as exc:
                self._last_error = exc
                await asyncio.sleep(max(_FIRST_RETRY_MIN, min(s.reconnect_wait, _FIRST_RETRY_MAX)))

    async def close(self) -> None:
        """Stop serving, let in-flight work finish (bounded), drain, disconnect.

        Replies to requests already handed to agents, and acks of events
        being handled, still go out: the connection stays up until they are
        written or `nats.drain_timeout` passes. Requests this node sent and
        that are still unanswered then fail with `Unavailable`. Safe to call
        more than once, and after the connection was lost.
        """
        if self.runtime.transport is self:
            self.runtime.transport = None
        if self._closing:
            return
        self._closing = True
        nc = self._nc
        try:
            for unwatch in self._unwatch:
                unwatch()
            self._unwatch.clear()
            await self.events.stop()
            for endpoint in self._endpoints.values():
                await endpoint.resync()  # closing: leaves every queue group
            if nc is not None and nc.is_connected:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    # Once the server has seen the unsubscribes, no new request comes here.
                    await nc.flush(timeout=max(1, math.ceil(self.settings.drain_timeout)))
            self._set_state(ConnectionState.DRAINING)
            await self._settle_in_flight()
            await self.outbox.stop()
            for task in list(self._tasks):
                task.cancel()
        finally:
            self._on_closed.clear()
            self._nc = None
            if nc is not None and not nc.is_closed:
                await self._disconnect(nc)
            self._set_state(ConnectionState.CLOSED)

    async def _settle_in_flight(self) -> None:
        if not self._in_flight:
            return
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.drain_timeout)
        except TimeoutError:
            logger.warning("%d requests or events still in flight at shutdown", self._in_flight)

    async def _disconnect(self, nc: Client) -> None:
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), self.settings.drain_timeout + 1)
            else:
                await nc.close()
        except Exception as exc:  # noqa: BLE001 - the connection is going away either way
            logger.warning("NATS disconnect: %s", exc)
            try:
                await nc.close()
            except Exception as again:  # noqa: BLE001 - closing is all that is left to try
                logger.warning("NATS close after a failed drain: %r", again)

    def track(self, delta: int) -> None:
        """Count work that must finish before a graceful close (loop thread only)."""
        self._in_flight += delta
        if not self._in_flight:
            self._idle.set()

    def _set_state(self, state: ConnectionState) -> None:
        self.state = state
        self.state_since = time.time()
        for callback in self._on_state:
            callback(state)

    async def _on_error(self, error: Exception) -> None:
        # While the first connection is made (the server may still be starting),
        # nats-py retries on its own: a refused attempt is no news.
        self._last_error = error
        level = logging.DEBUG if self.state is ConnectionState.CONNECTING else logging.WARNING
        self._log.log(level, f"{type(error).__name__}: {error}", f"NATS: {error}")

    async def _on_disconnected(self) -> None:
        if self._nc is not None:
            self._log.log(
                logging.WARNING, "disconnected", f"NATS disconnected from {redact_url(self.url)}"
            )
            self._set_state(ConnectionState.DISCONNECTED)

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        logger.info("NATS reconnected to %s", redact_url(self.url))
        self._set_state(ConnectionState.CONNECTED)

    async def _on_connection_closed(self) -> None:
        if self._nc is None:
            return
        self._set_state(ConnectionState.CLOSED)
        self._nc = None
        if self.runtime.transport is self:
            self.runtime.transport = None
        for callback in self._on_closed:
            callback()

    # -- serving local agents ----------------------------------------------

    async def _serve(self, agent_class: type[Agent]) -> None:
        agent_type = check_token(agent_class.agent_type, what="agent type")
        endpoint = AgentEndpoint(self, agent_class, self.runtime.ref(agent_type))
        self._endpoints[agent_type] = endpoint
        for event_type in event_types(agent_class):
            await self.events.consume(agent_class, event_type, endpoint.local)
        self._unwatch.append(
            self.runtime.directory.watch(
                agent_type, lambda _count: self.io.call_soon(self._resync_soon, endpoint)
            )
        )
        await endpoint.resync()

    @property
    def serving(self) -> bool:
        """Whether the bridge serves agents now (connected, not closing)."""
        return self._nc is not None and not self._closing

    @property
    def max_payload(self) -> int:
        """The server's largest accepted message, headers included."""
        return self._max_payload

    def service(self, agent_type: str) -> Service | None:
        """The micro service serving `agent_type`, while this node has agents of it."""
        endpoint = self._endpoints.get(agent_type)
        return None if endpoint is None else endpoint.service

    def _resync_soon(self, endpoint: AgentEndpoint) -> None:
        self.spawn(endpoint.resync())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task the bridge holds (and cancels on close)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        """Publish on the live connection; a failure is logged (the caller's deadline answers)."""
        nc = self._nc
        if nc is None or not subject:
            return
        try:
            await nc.publish(subject, body, headers=headers)
        except nats.errors.Error as exc:
            # The caller's deadline turns a lost reply into a typed timeout.
            logger.warning("cannot publish to %s: %s", subject, exc)

    # -- reaching remote agents (Transport) --------------------------------

    def deliver(self, agent_type: str, call: Call) -> bool:
        """Send a call to `agent_type` over NATS (any thread); False if not connected."""
        if self._nc is None or self._closing:
            return False
        subject = self.subjects.agent(agent_type)
        meta = call.meta
        tracing = self.runtime.tracing
        if tracing is not None:
            span = tracing.start(
                f"send {agent_type}",
                kind=SpanKind.PRODUCER,
                parent=meta,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": subject,
                    "messaging.message.id": meta.id,
                },
            )
            meta = within(meta, span)
            if call.reply is None:
                span.end()
            else:
                call.reply.add_done_callback(lambda _r: span.end())
        try:
            body = self.envelope(call.payload, meta)
        except AgentError as error:
            if call.reply is None:
                raise
            call.reply.fail(error)
            return True
        if call.reply is None:
            self.outbox.put(self.send, subject, body, None)
        elif call.reply.on_chunk is not None:
            self.io.call_soon(self._start_stream, subject, body, call.reply)
        else:
            self.io.call_soon(self._start_request, subject, body, call.reply)
        return True

    def envelope(self, payload: Any, meta: Metadata) -> bytes:
        """The request envelope, refused if over the server's max payload.

        Raises:
            PayloadTooLarge: If it would not be accepted.
            BadRequest: If it cannot be encoded.
        """
        return self._size_checked(encode_request, payload, meta)

    def _size_checked(
        self,
        encoder: Callable[..., bytes],
        message: Any,
        *rest: Any,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        try:
            body = encoder(message, *rest)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            msg = f"cannot encode {type(message).__name__}: {exc}"
            raise BadRequest(msg) from exc
        # The server counts headers against its limit too.
        size = len(body) + headers_size(headers)
        if size > self._max_payload:
            raise PayloadTooLarge(size, self._max_payload)
        return body

    def _start_request(self, subject: str, body: bytes, reply: Reply[Any]) -> None:
        self.spawn(settle(subject, reply, self._request(subject, body, reply.deadline)))

    def _start_stream(self, subject: str, body: bytes, reply: Reply[Any]) -> None:
        """A request whose handler emits chunks: relay them, then settle the reply.

        The responder answers on our own inbox: chunk frames first, then the
        reply (see `bridges.nats._wire.STREAM_HEADER`).
        """
        self.spawn(settle(subject, reply, self._stream(subject, body, reply)))

    async def _stream(self, subject: str, body: bytes, reply: Reply[Any]) -> Any:
        nc = self._nc
        if nc is None:
            text = "the NATS bridge is not connected"
            raise Unavailable(text)
        if self._inbox is None or self._inbox.nc is not nc:
            self._inbox = Inbox(nc)
        return await stream_reply(nc, self._inbox, subject, body, reply)

    async def _request(self, subject: str, body: bytes, deadline: float) -> Any:
        return await request_reply(lambda: self._nc, subject, body, deadline)

    async def ask(self, agent_type: str, message: Any, meta: Metadata) -> Any:
        """Ask an agent type over NATS from the loop itself (for loop-side callers).

        Raises:
            messages.AgentError: The typed failure, as for `AgentRef.ask`.
        """
        body = self.envelope(message, meta)
        return await self._request(self.subjects.agent(agent_type), body, meta.deadline)

    def publish(self, event: Event, meta: Metadata) -> None:
        """Store `event` on the event stream, from an actor thread (`Transport`)."""
        timeout = meta.deadline - time.time()
        if timeout <= 0:
            msg = f"deadline passed before publishing {type(event).__name__}"
            raise RequestTimeout(msg)
        body = self._size_checked(encode, event, headers=event_headers(meta))
        try:
            self.io.run(self.events.publish(event, body, meta), timeout=timeout)
        except TimeoutError:
            msg = f"{type(event).__name__} not stored within {timeout:.3f} s"
            raise RequestTimeout(msg) from None

    async def publish_async(self, event: Event, meta: Metadata) -> bool:
        """Store `event` from the loop; True if new, False if a duplicate id."""
        body = self._size_checked(encode, event, headers=event_headers(meta))
        return await self.events.publish(event, body, meta)
