"""Serving one agent type over NATS: queue-group presence, micro discovery, answers.

An `AgentEndpoint` belongs to a `NatsBridge` and runs on its I/O loop. It
keeps the node in the type's queue group exactly while the node has live
agents of the type, decodes each request (envelope or bare body with
headers), hands it to a local agent as a `Call`, and answers through the
bridge's outbox when the agent's `Reply` is settled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import typing
from importlib import metadata as distribution
from typing import TYPE_CHECKING, Any, Final

import msgspec
from nats.micro import add_service
from nats.micro.service import EndpointStats

from actors import Call, Reply
from bridges.nats._wire import (
    STREAM_HEADER,
    EnvelopeDecoder,
    encode_chunk_frame,
    encode_error,
    encode_error_envelope,
    encode_reply,
    encode_reply_envelope,
    envelope_decoder,
    error_code_of,
    is_envelope,
    metadata_from_headers,
    open_envelope,
)
from messages import (
    AgentError,
    BadRequest,
    Event,
    InternalError,
    Message,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    decoder_for,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.micro.request import Request
    from nats.micro.service import Service

    from actors import Agent, TypeRef
    from bridges.nats._host import Host

logger: Final = logging.getLogger("actorfleet.nats")

_VERSION: Final = "0.0.0"
_MICRO_NAME_MAX: Final = 64
_HEADER_OVERHEAD: Final = 12  # "NATS/1.0\r\n" and the closing "\r\n"
_LAST_ERROR_MAX: Final = 256

Decoders = tuple[msgspec.msgpack.Decoder[Any], EnvelopeDecoder]


class _Untyped(Message, frozen=True, kw_only=True, tag="actorfleet.untyped"):
    """Never sent. Beside a lone request type it makes the decoder a tagged union.

    msgspec takes a map without the tag as the one Struct type it decodes
    into; a union of two tagged types requires the tag.
    """


class Answer(Reply[Any]):
    """The reply to a request that came over NATS, with where and how to answer it.

    Once settled, the endpoint publishes it from the loop. One object per
    request: the reply carries what the answer needs, so settling it makes
    no closure.
    """

    __slots__ = ("enveloped", "reply_to", "started")

    def __init__(self, reply_to: str, enveloped: bool, deadline: float) -> None:
        super().__init__(deadline)
        self.reply_to = reply_to
        self.enveloped = enveloped
        self.started = time.perf_counter()


class EndpointCounters:
    """What `$SRV.STATS` reports for an endpoint, counted when each answer goes out.

    nats.micro counts an error only when its handler raises and times only
    the handler's call, but an agent answers later, from its own thread;
    these counters replace micro's in its stats (through its `stats_handler`).
    """

    __slots__ = ("answered", "errors", "last_error", "processing_ns")

    def __init__(self) -> None:
        self.errors = 0
        self.last_error: str | None = None
        self.processing_ns = 0
        self.answered = 0

    def count(self, error: BaseException | None, elapsed: float) -> None:
        """Count one answer (loop thread)."""
        self.answered += 1
        self.processing_ns += int(elapsed * 1e9)
        if error is not None:
            self.errors += 1
            code = error_code_of(error).value
            text = error.message if isinstance(error, AgentError) else type(error).__name__
            self.last_error = f"{code}: {text}"[:_LAST_ERROR_MAX]

    def report(self, stats: EndpointStats) -> None:
        """Write these counts into micro's stats of the endpoint."""
        stats.num_errors = self.errors
        stats.last_error = self.last_error
        stats.processing_time = self.processing_ns
        stats.average_processing_time = self.processing_ns // self.answered if self.answered else 0


def _package_version() -> str:
    try:
        return distribution.version("actorfleet")
    except distribution.PackageNotFoundError:
        return _VERSION


def request_types(agent_class: type[Agent]) -> tuple[type[Message], ...]:
    """The wire message types an agent handles (other handled types stay local)."""
    return tuple(
        t
        for t in agent_class.handlers
        if isinstance(t, type) and issubclass(t, Message) and not issubclass(t, Event)
    )


def event_types(agent_class: type[Agent]) -> tuple[type[Event], ...]:
    """The domain events an agent subscribes to."""
    return tuple(t for t in agent_class.handlers if isinstance(t, type) and issubclass(t, Event))


def headers_size(headers: dict[str, str] | None) -> int:
    """Bytes the headers add to a message on the wire (upper bound)."""
    if not headers:
        return 0
    # Bytes, not characters: a value may be any UTF-8 text (tracestate, say).
    return _HEADER_OVERHEAD + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


class AgentEndpoint:
    """One agent type served by a bridge."""

    def __init__(self, bridge: Host, agent_class: type[Agent], local: TypeRef) -> None:
        self.bridge = bridge
        self.agent_class = agent_class
        self.local = local
        self.types = request_types(agent_class)
        metrics = bridge.metrics
        self._record = None if metrics is None else metrics.recorder("nats", agent_class.agent_type)
        union = typing.Union[self.types] if self.types else None  # noqa: UP007 - run time
        tagged = typing.Union[(*self.types, _Untyped)] if self.types else None
        self.decoders: Decoders | None = (
            (decoder_for(tagged), envelope_decoder(tagged)) if tagged is not None else None
        )
        self.schema = msgspec.json.encode(msgspec.json.schema(union)).decode() if union else "{}"
        self.counters = EndpointCounters()
        self.service: Service | None = None
        self._lock = asyncio.Lock()
        # Handed to every reply: once settled, it is answered from the loop.
        self._settled = functools.partial(bridge.outbox.put, self._answer)

    async def resync(self) -> None:
        """Be in the type's queue group exactly while this node has live agents of it.

        A node whose agents of a type are all down (crashed, restarting)
        leaves the queue group, so NATS sends the type's requests to nodes
        that can answer them, or answers no-responders if none can.
        """
        async with self._lock:
            wanted = bool(self.local.members()) and self.bridge.serving
            if wanted and self.service is None:
                self.service = await self._add_service()
            elif not wanted and self.service is not None:
                service, self.service = self.service, None
                try:
                    await service.stop()
                except Exception as exc:  # noqa: BLE001 - leaving the group is best effort
                    logger.warning("stopping the %s service: %r", self.agent_class.agent_type, exc)

    async def _add_service(self) -> Service:
        agent_type = self.agent_class.agent_type

        async def on_request(request: Request) -> None:
            self.on_request(request._msg)  # noqa: SLF001 - micro hides the reply subject

        service = await add_service(
            self.bridge.nc,
            name=agent_type[:_MICRO_NAME_MAX],
            version=_package_version(),
            description=(self.agent_class.__doc__ or self.agent_class.__name__)
            .strip()
            .split("\n")[0],
            metadata={"node": self.bridge.runtime.node, "framework": "actorfleet"},
            stats_handler=self._stats,
        )
        await service.add_endpoint(
            name=agent_type,
            subject=self.bridge.subjects.agent(agent_type),
            queue_group=agent_type,
            handler=on_request,
            metadata={
                "requests": ",".join(t.__name__ for t in self.types),
                "events": ",".join(t.__name__ for t in event_types(self.agent_class)),
                "schema": self.schema,
            },
        )
        return service

    def _stats(self, stats: EndpointStats) -> None:
        self.counters.report(stats)

    def _undecodable(self, exc: msgspec.DecodeError) -> BadRequest:
        """Why a request is not one of the type's, naming the tags when its own is wrong."""
        reason = f"cannot decode a {self.local.name} request: {exc}"
        if "`type`" in reason or "$.type" in reason:
            tags = ", ".join(str(t.__struct_config__.tag) for t in self.types)
            reason = f'{reason}: "type" must be one of {tags}'
        return BadRequest(reason)

    def on_request(self, msg: Msg) -> None:
        """Decode, check and hand a request to a local agent (on the loop; never waits)."""
        local = self.local
        headers = msg.headers
        streamed = bool(headers) and STREAM_HEADER in headers  # type: ignore[operator]
        enveloped = (not headers or streamed) and is_envelope(msg.data)
        try:
            if self.decoders is None:
                error = f"{local.name} takes no requests over NATS"
                raise BadRequest(error)
            if enveloped:
                payload, meta = open_envelope(self.decoders[1].decode(msg.data))
            else:
                meta = metadata_from_headers(
                    msg.headers, default_timeout=self.bridge.runtime.defaults.ask_timeout
                )
                payload = self.decoders[0].decode(msg.data)
            if type(payload) is _Untyped:
                error = f"{local.name} does not take {_Untyped.__struct_config__.tag!r}"
                raise BadRequest(error)
        except msgspec.DecodeError as exc:
            bad = self._undecodable(exc)
            self._respond_error(msg, bad, enveloped=enveloped)
            return
        except AgentError as error:
            self._respond_error(msg, error, enveloped=enveloped)
            return
        if meta.deadline <= time.time():
            late = RequestTimeout("deadline passed before the request arrived")
            self._respond_error(msg, late, enveloped=enveloped)
            return
        reply = Answer(msg.reply, enveloped, meta.deadline) if msg.reply else None
        if reply is not None and streamed and enveloped:
            bridge, reply_to = self.bridge, reply.reply_to
            reply.on_chunk = lambda chunk: bridge.outbox.put(
                bridge.send, reply_to, encode_chunk_frame(chunk), None
            )
        if not local.deliver_local(Call(payload, meta, reply)):
            gone = Unavailable(f"no agent of type {local.name} on this node", retry_after=0.0)
            self._respond_error(msg, gone, enveloped=enveloped)
            return
        if reply is not None:
            self.bridge.track(+1)
            reply.add_done_callback(self._settled)

    async def _answer(self, reply: Answer) -> None:
        bridge = self.bridge
        outcome = reply.result()
        failed = outcome if isinstance(outcome, BaseException) else None
        elapsed = time.perf_counter() - reply.started
        self.counters.count(failed, elapsed)
        if self._record is not None:
            self._record("ok" if failed is None else error_code_of(failed), elapsed)
        try:
            body, headers = encode_answer(outcome, enveloped=reply.enveloped)
            size = len(body) + headers_size(headers)
            if size > bridge.max_payload:
                too_large = PayloadTooLarge(size, bridge.max_payload)
                body, headers = encode_answer(too_large, enveloped=reply.enveloped)
            await bridge.send(reply.reply_to, body, headers)
        finally:
            bridge.track(-1)

    def _respond_error(self, msg: Msg, error: BaseException, *, enveloped: bool) -> None:
        self.counters.count(error, 0.0)
        if msg.reply:
            body, headers = encode_answer(error, enveloped=enveloped)
            self.bridge.outbox.put(self.bridge.send, msg.reply, body, headers)


def encode_answer(result: Any, *, enveloped: bool) -> tuple[bytes, dict[str, str] | None]:
    """Body and headers of a reply, in the style the request came in."""
    if isinstance(result, BaseException):
        if enveloped:
            return encode_error_envelope(result), None
        return encode_error(result)
    try:
        if enveloped:
            return encode_reply_envelope(result), None
        return encode_reply(result)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return encode_answer(InternalError("the reply could not be encoded"), enveloped=enveloped)
