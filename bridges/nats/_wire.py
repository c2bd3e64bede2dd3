"""How requests, replies and events look on NATS: subjects, envelopes, headers.

Between actorfleet nodes a request's metadata and message travel together
in one MessagePack array, the envelope::

    [2, id, deadline, correlation_id, priority, sender, traceparent, tracestate,
     principal, message]

(`principal` is who the request acts for, `messages.Principal`, or nil; a
version 1 envelope, from a node before principals, has no such field) and
the reply is `[tag, value]`, where `tag` is the wire tag of the value's
type ("ErrorReply" for a typed failure, "" for plain data). nats-py's header
path is dear: raw request/reply runs at 0.79x with one header and 0.61x with
four (`bench/nats_wire.py`), so the hot path carries none.

Any other NATS client may call an agent with the bare message as the body
and the metadata in headers; it gets the bare reply with its tag in a
header. Events always carry headers (JetStream deduplicates by
`Nats-Msg-Id`)::

    Af-Id             message id (also Nats-Msg-Id on events: JetStream dedup)
    Af-Deadline       absolute deadline, epoch seconds
    Af-Correlation-Id id of the request that caused this one
    Af-Priority       critical | default | sheddable
    Af-Sender         who sent it
    traceparent       W3C trace context
    tracestate        W3C trace state
    Af-Reply          on replies: the wire tag of the body's type
                      ("ErrorReply" for a typed failure; empty for plain data)

Ids, correlation ids and senders are bounded identifiers
(`messages.Identifier`: 1-128 of `[A-Za-z0-9._:-]`) in headers and envelope
alike; a deadline header is plain decimal text; a repeated header is combined
into one comma-separated value, as HTTP combines field lines, so a repeated
single-valued header is malformed. Anything else is a `bad_request`.
"""

from __future__ import annotations

import math
import re
import time
import types
from typing import Any, Final

import msgspec

from messages import (
    AgentError,
    BadRequest,
    ErrorCode,
    ErrorReply,
    Identifier,
    InternalError,
    Message,
    Metadata,
    Principal,
    Priority,
    Sender,
    Tracestate,
    check_identifier,
    check_optional_identifier,
    check_sender,
    decoder_for,
    encode,
    message_types,
    new_message_id,
    parse_decimal,
    valid_traceparent,
    valid_tracestate,
)

ID: Final = "Af-Id"
DEADLINE: Final = "Af-Deadline"
CORRELATION_ID: Final = "Af-Correlation-Id"
PRIORITY: Final = "Af-Priority"
SENDER: Final = "Af-Sender"
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
REPLY_TYPE: Final = "Af-Reply"
MSG_ID: Final = "Nats-Msg-Id"
ERROR_CODE: Final = "Af-Error-Code"
ERROR_MESSAGE: Final = "Af-Error"
SERVICE_ERROR: Final = "Nats-Service-Error"

ERROR_TAG: Final = "ErrorReply"
# A request with this header (and an envelope) asks for the handler's chunks:
# the responder sends `[CHUNK_TAG, [tag, chunk]]` frames, then the reply.
STREAM_HEADER: Final = "Af-Stream"
CHUNK_TAG: Final = "Af-Chunk"
# No request from the network may ask for a longer budget than this.
MAX_BUDGET_S: Final = 24 * 3600.0
_PRIORITIES: Final = {p.value: p for p in Priority}
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def check_token(value: str, *, what: str) -> str:
    """Return `value` if it is usable as one subject token; raise BadRequest if not."""
    if not _TOKEN.match(value):
        msg = f"{what} {value!r} is not a valid subject token (letters, digits, '-', '_')"
        raise BadRequest(msg)
    return value


class Subjects:
    """The subjects of one deployment, under a configurable prefix (default `af`)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "af") -> None:
        self.prefix = prefix

    def agent(self, agent_type: str) -> str:
        """Requests to an agent type (queue group: the type)."""
        return f"{self.prefix}.agent.{agent_type}"

    def event(self, event_type: str) -> str:
        """Domain events of one type."""
        return f"{self.prefix}.evt.{event_type}"

    def all_events(self) -> str:
        """Every domain event (the event stream's subjects)."""
        return f"{self.prefix}.evt.>"

    def dead_letter(self, event_type: str) -> str:
        """Events whose handling failed `max_deliver` times."""
        return f"{self.prefix}.dlq.{event_type}"

    def all_dead_letters(self) -> str:
        """Every dead letter (the dead-letter stream's subjects)."""
        return f"{self.prefix}.dlq.>"

    def inference(self, tier: str) -> str:
        """Generation requests to a tier's model workers (queue group: the tier)."""
        return f"{self.prefix}.inf.{tier}"

    def inference_ready(self, tier: str) -> str:
        """Where a tier's model workers say they now take requests."""
        return f"{self.prefix}.inf.{tier}.ready"

    def inference_control(self, tier: str, worker: str) -> str:
        """Cancellations for one model worker."""
        return f"{self.prefix}.inf.{tier}.ctl.{worker}"


def metadata_headers(meta: Metadata) -> dict[str, str]:
    """The headers that carry `meta`."""
    headers = {ID: meta.id}
    if meta.priority is not Priority.DEFAULT:
        headers[PRIORITY] = meta.priority.value
    if meta.deadline != math.inf:
        headers[DEADLINE] = repr(meta.deadline)
    return _with_cause(headers, meta)


def event_headers(meta: Metadata) -> dict[str, str]:
    """The headers of a published event: its id (JetStream dedup) and its cause.

    Deadline and priority belong to requests; a consumer gives each
    delivery its own handling deadline.
    """
    return _with_cause({MSG_ID: meta.id}, meta)


def _with_cause(headers: dict[str, str], meta: Metadata) -> dict[str, str]:
    """Add the optional fields (correlation id, sender, trace context) that are set."""
    optional = (
        (CORRELATION_ID, meta.correlation_id),
        (SENDER, meta.sender),
        (TRACEPARENT, meta.traceparent),
        (TRACESTATE, meta.tracestate),
    )
    headers.update({name: value for name, value in optional if value is not None})
    return headers


def event_metadata(headers: dict[str, str] | None, deadline: float, delivery: int) -> Metadata:
    """The metadata a consumer hands an event's handler (its own deadline).

    Raises:
        BadRequest: If an id header is not a valid identifier.
    """
    headers = headers or {}
    raw_id = headers.get(MSG_ID) or headers.get(ID)
    traceparent = valid_traceparent(headers.get(TRACEPARENT))
    return Metadata(
        id=new_message_id()
        if raw_id is None
        else check_identifier(raw_id, what=f"header {MSG_ID}"),
        deadline=deadline,
        correlation_id=check_optional_identifier(
            headers.get(CORRELATION_ID), what=f"header {CORRELATION_ID}"
        ),
        sender=check_sender(headers.get(SENDER), what=f"header {SENDER}"),
        traceparent=traceparent,
        tracestate=valid_tracestate(headers.get(TRACESTATE), traceparent),
        delivery=delivery,
    )


def _header_id(headers: dict[str, str], first: str, second: str) -> str:
    """The id in the first of two headers that is set (checked), or a fresh one."""
    for name in (first, second):
        value = headers.get(name)
        if value:
            return check_identifier(value, what=f"header {name}")
    return new_message_id()


def bounded_deadline(deadline: float, *, what: str) -> float:
    """A deadline from the network, no later than `MAX_BUDGET_S` from now.

    An infinite or absurd deadline would hold a handler (and its hung-handler
    timer) forever; it is cut to the longest budget a node grants.

    Raises:
        BadRequest: If it is not a number.
    """
    if math.isnan(deadline):
        msg = f"{what} is not a number"
        raise BadRequest(msg)
    return min(deadline, time.time() + MAX_BUDGET_S)


def metadata_from_headers(
    headers: dict[str, str] | None, *, default_timeout: float, delivery: int = 1
) -> Metadata:
    """Rebuild a message's metadata from its headers.

    A message without a deadline gets `default_timeout` from now; without an
    id, a fresh one (so it cannot be deduplicated). An invalid `traceparent`
    is ignored (W3C: a new trace starts), with its `tracestate`.

    Raises:
        BadRequest: If a header holds a value of the wrong form.
    """
    headers = headers or {}
    raw_deadline = headers.get(DEADLINE)
    if raw_deadline is None:
        deadline = time.time() + default_timeout
    else:
        what = f"header {DEADLINE}"
        deadline = bounded_deadline(parse_decimal(raw_deadline, what=what), what=what)
    raw_priority = headers.get(PRIORITY, Priority.DEFAULT.value)
    priority = _PRIORITIES.get(raw_priority)
    if priority is None:
        shown = raw_priority[:32]
        msg = f"header {PRIORITY} must be one of {sorted(_PRIORITIES)}, not {shown!r}"
        raise BadRequest(msg)
    traceparent = valid_traceparent(headers.get(TRACEPARENT))
    return Metadata(
        id=_header_id(headers, ID, MSG_ID),
        deadline=deadline,
        correlation_id=check_optional_identifier(
            headers.get(CORRELATION_ID), what=f"header {CORRELATION_ID}"
        ),
        priority=priority,
        sender=check_sender(headers.get(SENDER), what=f"header {SENDER}"),
        traceparent=traceparent,
        tracestate=valid_tracestate(headers.get(TRACESTATE), traceparent),
        delivery=delivery,
    )


ENVELOPE_VERSION: Final = 2
"""The envelope this node writes; it reads this one and version 1 (no principal)."""
_FIRST_VERSION: Final = 1
_FIXARRAY_FIRST: Final = 0x90
_FIXARRAY_LAST: Final = 0x9F


def is_envelope(data: bytes) -> bool:
    """Whether a body is an envelope (a MessagePack array) rather than a bare message."""
    return bool(data) and _FIXARRAY_FIRST <= data[0] <= _FIXARRAY_LAST


def encode_request(payload: Any, meta: Metadata) -> bytes:
    """The envelope of one request."""
    return encode(
        (
            ENVELOPE_VERSION,
            meta.id,
            meta.deadline,
            meta.correlation_id,
            meta.priority,
            meta.sender,
            meta.traceparent,
            meta.tracestate,
            meta.principal,
            payload,
        )
    )


ENVELOPE_METADATA: Final = (
    int,  # version
    Identifier,  # message id
    float,  # deadline
    Identifier | None,  # correlation id
    Priority,
    Sender | None,
    str | None,  # traceparent
    Tracestate | None,
    Principal | None,
)
"""The types of a version 2 envelope's fields before its message."""


class EnvelopeDecoder:
    """Decodes request envelopes whose message is of one type, either version.

    Version 2 carries the request's principal before the message; version 1
    (nodes before it) has none, which reads as no principal.
    """

    __slots__ = ("_first", "_second")

    def __init__(self, payload_type: Any) -> None:
        fields = (*ENVELOPE_METADATA, payload_type)
        self._second = msgspec.msgpack.Decoder(types.GenericAlias(tuple, fields))
        # Version 1: the same fields but the principal.
        self._first = msgspec.msgpack.Decoder(types.GenericAlias(tuple, fields[:-2] + fields[-1:]))

    def decode(self, data: bytes) -> tuple[Any, ...]:
        """The envelope's fields, version 2's (a version 1 envelope gets no principal).

        Raises:
            msgspec.DecodeError: It is not an envelope of this message type.
        """
        # An envelope's second byte is its version (a MessagePack fixint).
        if len(data) > 1 and data[1] == _FIRST_VERSION:
            *fields, payload = self._first.decode(data)
            return (*fields, None, payload)
        envelope: tuple[Any, ...] = self._second.decode(data)
        return envelope


def envelope_decoder(payload_type: Any) -> EnvelopeDecoder:
    """A decoder of request envelopes whose message is of `payload_type`."""
    return EnvelopeDecoder(payload_type)


def open_envelope(envelope: tuple[Any, ...]) -> tuple[Any, Metadata]:
    """The message and metadata of a decoded envelope.

    Raises:
        BadRequest: If the envelope is of a version this node cannot read.
    """
    version, id_, deadline, correlation_id, priority, sender, parent, state, *rest = envelope
    principal, payload = rest
    if version not in {_FIRST_VERSION, ENVELOPE_VERSION}:
        msg = f"envelope version {version} is not supported (this node reads {ENVELOPE_VERSION})"
        raise BadRequest(msg)
    traceparent = valid_traceparent(parent)
    meta = Metadata(
        id=id_,
        deadline=bounded_deadline(deadline, what="the envelope's deadline"),
        correlation_id=correlation_id,
        priority=priority,
        sender=sender,
        traceparent=traceparent,
        tracestate=state if traceparent is not None else None,
        principal=principal,
    )
    return payload, meta


_tags: dict[type, str] = {}


def _tag_of(value: Any) -> str:
    kind = type(value)
    tag = _tags.get(kind)
    if tag is None:
        found = kind.__struct_config__.tag if isinstance(value, Message) else ""
        tag = _tags[kind] = found if isinstance(found, str) else ""
    return tag


def encode_reply_envelope(value: Any) -> bytes:
    """The envelope of a successful reply: `[tag, value]`."""
    return encode((_tag_of(value), value))


def encode_error_envelope(error: BaseException) -> bytes:
    """The envelope of a failed reply; non-agent errors become `internal`."""
    return encode((ERROR_TAG, ErrorReply.from_error(_as_agent_error(error))))


_reply_envelope: Final = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])


def decode_reply_envelope(data: bytes) -> Any:
    """The value of a reply envelope; a typed failure is raised.

    Raises:
        AgentError: The error an `ErrorReply` stands for.
        InternalError: If the envelope is malformed.
    """
    try:
        tag, raw = _reply_envelope.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"malformed reply: {exc}"
        raise InternalError(msg) from exc
    return _decode_tagged(tag, raw)


def encode_chunk_frame(chunk: Any) -> bytes:
    """A chunk frame of a streamed reply."""
    return encode((CHUNK_TAG, (_tag_of(chunk), chunk)))


_chunk_frame: Final = msgspec.msgpack.Decoder(tuple[str, tuple[str, msgspec.Raw]])


def decode_stream_frame(data: bytes) -> tuple[bool, Any]:
    """`(True, chunk)` for a chunk frame, `(False, value)` for the reply.

    Raises:
        AgentError: The error the reply stands for.
        InternalError: If the frame is malformed.
    """
    try:
        tag, raw = _reply_envelope.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"malformed frame: {exc}"
        raise InternalError(msg) from exc
    if tag != CHUNK_TAG:
        return False, _decode_tagged(tag, raw)
    try:
        inner_tag, inner = _chunk_frame.decode(data)[1]
    except msgspec.DecodeError as exc:
        msg = f"malformed chunk frame: {exc}"
        raise InternalError(msg) from exc
    return True, _decode_tagged(inner_tag, inner)


def _decode_tagged(tag: str, data: bytes | msgspec.Raw) -> Any:
    try:
        if tag == ERROR_TAG:
            reply: ErrorReply = decoder_for(ErrorReply).decode(data)
            raise reply.to_error()
        cls = reply_class(tag) if tag else None
        return decoder_for(cls).decode(data) if cls is not None else msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"malformed reply of type {tag or 'data'}: {exc}"
        raise InternalError(msg) from exc


def _as_agent_error(error: BaseException) -> AgentError:
    if isinstance(error, AgentError):
        return error
    return InternalError(f"{type(error).__name__} while handling the request")


def encode_reply(value: Any) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a successful reply."""
    return encode(value), {REPLY_TYPE: _tag_of(value)}


def encode_error(error: BaseException) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a failed reply; non-agent errors become `internal`."""
    return encode(ErrorReply.from_error(_as_agent_error(error))), {REPLY_TYPE: ERROR_TAG}


_known: dict[str, type[Message]] = {}


def reply_class(tag: str) -> type[Message] | None:
    """The Message class whose wire tag is `tag`, if this process defines one."""
    cls = _known.get(tag)
    if cls is None:
        _known.update(message_types())
        cls = _known.get(tag)
    return cls


def decode_reply(data: bytes, headers: dict[str, str] | None) -> Any:
    """The value a reply carries, enveloped or bare; a typed failure is raised.

    A reply whose type this process does not define decodes to plain data.

    Raises:
        AgentError: The error an `ErrorReply` stands for, or `InternalError`
            if the responder was not an actorfleet agent and reported an error.
    """
    if not headers:
        return decode_reply_envelope(data)
    tag = headers.get(REPLY_TYPE)
    if tag is None:
        service_error = headers.get(SERVICE_ERROR)
        if service_error is not None:
            raise InternalError(f"the responder failed: {service_error}")
        return msgspec.msgpack.decode(data) if data else None
    return _decode_tagged(tag, data)


def error_code_of(error: BaseException) -> ErrorCode:
    """The wire code that `error` travels as."""
    return error.code if isinstance(error, AgentError) else ErrorCode.INTERNAL
