"""What each NATS message looks like, for the AsyncAPI document: payloads, envelopes, headers.

Payload schemas are msgspec's JSON Schema of the very types the bridge
encodes (`msgspec.json.schema_components`), referenced under
`#/components/schemas/`, in the draft-07 dialect of AsyncAPI's Schema
Object: a tuple's `prefixItems` become `items`, and a tagged union's
discriminator is its property name. The request envelope and the reply
frames are arrays around those schemas, as `bridges.nats._wire` writes
them; metadata that travels in NATS headers is given as the message's
headers, under the names the bridge reads.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from bridges.nats._events import DELIVERY
from bridges.nats._wire import (
    CHUNK_TAG,
    CORRELATION_ID,
    DEADLINE,
    ENVELOPE_METADATA,
    ENVELOPE_VERSION,
    ERROR_CODE,
    ERROR_MESSAGE,
    ERROR_TAG,
    ID,
    MSG_ID,
    PRIORITY,
    REPLY_TYPE,
    SENDER,
    STREAM_HEADER,
    TRACEPARENT,
    TRACESTATE,
)
from messages import (
    ErrorCode,
    ErrorReply,
    Identifier,
    Message,
    Priority,
    Sender,
    Traceparent,
)

MSGPACK: Final = "application/msgpack"
JSON: Final = "application/json"
SCHEMAS: Final = "#/components/schemas/"
REQUEST_HEADERS: Final = "NatsRequestHeaders"
EVENT_HEADERS: Final = "NatsEventHeaders"
DEAD_LETTER_HEADERS: Final = "NatsDeadLetterHeaders"

EnvelopeMetadata: Final = types.GenericAlias(tuple, ENVELOPE_METADATA)
"""The envelope's fields before the message, as `EnvelopeDecoder` reads them (version 2)."""

_ENVELOPE_FIELDS: Final = (
    f"Envelope version: this node writes {ENVELOPE_VERSION}; it also reads 1 (no principal).",
    "Message id; a retry reuses it, so side effects stay idempotent.",
    "Absolute deadline, seconds since the epoch (cut to a day from arrival).",
    "Id of the request that caused this one.",
    "Load-shedding priority.",
    "Who sent it (agent type and instance, or a client name).",
    "W3C traceparent (an invalid one is ignored, with its tracestate).",
    "W3C tracestate.",
    "Who the request acts for, as an edge authenticated it; nil inside the trust boundary.",
)
REQUEST_FORMS: Final = (
    "Between actorfleet nodes the body is the envelope, one MessagePack array of the"
    " metadata and the message, without headers (a request for a streamed reply adds"
    f" `{STREAM_HEADER}: 1`). Any other NATS client may send the bare message, the metadata"
    " in the optional headers; it gets the bare reply, its type in"
    f" `{REPLY_TYPE}`. The message's `type` tag is required either way."
)
REPLY_FORMS: Final = (
    "The envelope `[tag, value]` to an enveloped request; the bare value, its tag in"
    f" `{REPLY_TYPE}`, to a bare one."
)
# Subschemas by keyword, so that names of properties are never read as keywords.
_SUBSCHEMA: Final = frozenset(
    {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"}
)
_SUBSCHEMA_LISTS: Final = frozenset({"anyOf", "oneOf", "allOf"})
_SUBSCHEMA_MAPS: Final = frozenset({"properties", "patternProperties", "$defs", "definitions"})


def draft07(schema: Any) -> Any:
    """`schema` (JSON Schema 2020-12, as msgspec writes it) in AsyncAPI's draft-07 dialect."""
    if not isinstance(schema, dict):
        return schema
    tuple_like = "prefixItems" in schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "prefixItems":
            out["items"] = [draft07(s) for s in value]
        elif key == "items" and tuple_like:
            out["additionalItems"] = draft07(value)
        elif key == "discriminator" and isinstance(value, dict):
            out[key] = value["propertyName"]
        elif key in _SUBSCHEMA:
            out[key] = draft07(value)
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [draft07(s) for s in value]
        elif key in _SUBSCHEMA_MAPS:
            out[key] = {name: draft07(s) for name, s in value.items()}
        else:
            out[key] = value
    return out


class Schemas:
    """The schemas of every type the document names, built by msgspec in one pass.

    Args:
        types: The payload types (Structs, unions, annotated scalars, ...).
    """

    def __init__(self, types: Iterable[Any]) -> None:
        always = (
            EnvelopeMetadata,
            ErrorReply,
            ErrorCode,
            Priority,
            Identifier,
            Sender,
            Traceparent,
        )
        wanted = list(dict.fromkeys([*always, *types]))
        found, components = msgspec.json.schema_components(wanted, ref_template=SCHEMAS + "{name}")
        self._by_type = {t: draft07(s) for t, s in zip(wanted, found, strict=True)}
        self.components: dict[str, Any] = {n: draft07(s) for n, s in components.items()}
        self.components.update(self._headers())

    def __getitem__(self, message_type: Any) -> dict[str, Any]:
        """The schema of one of the types given (a reference, or inline)."""
        schema: dict[str, Any] = self._by_type[message_type]
        return schema

    def _headers(self) -> dict[str, Any]:
        identifier, sender = self[Identifier], self[Sender]
        cause = {
            CORRELATION_ID: described(identifier, "Id of the message that caused this one."),
            SENDER: described(sender, "Who sent it."),
            TRACEPARENT: described(self[Traceparent], "W3C traceparent (ignored if invalid)."),
            TRACESTATE: {"type": "string", "description": "W3C tracestate (with a traceparent)."},
        }
        decimal = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
        request = {
            ID: described(identifier, "Message id; without one, a fresh id (no dedup)."),
            MSG_ID: described(identifier, f"The message id, if `{ID}` is absent."),
            DEADLINE: {**decimal, "description": "Absolute deadline, epoch seconds."},
            PRIORITY: described(self[Priority], "Load-shedding priority."),
            **cause,
            STREAM_HEADER: {
                "const": "1",
                "description": "With an envelope: send the handler's chunks, then the reply.",
            },
        }
        event = {MSG_ID: described(identifier, "The event's id: JetStream's dedup key."), **cause}
        dead_letter = {
            **event,
            MSG_ID: described(identifier, "`dlq.` and the event's id (or its sequence)."),
            ERROR_CODE: described(self[ErrorCode], "Why its last handling failed."),
            ERROR_MESSAGE: {"type": "string", "description": "What the error said."},
            DELIVERY: {**decimal, "description": "How many times it was delivered."},
        }
        return {
            REQUEST_HEADERS: _object(request, "Metadata of a bare request (all optional)."),
            EVENT_HEADERS: _object(event, "Metadata of an event, as the node publishes it."),
            DEAD_LETTER_HEADERS: _object(
                dead_letter,
                "The event's own headers and why it failed.",
                required=[MSG_ID, ERROR_CODE, ERROR_MESSAGE, DELIVERY],
            ),
        }


def _object(
    properties: dict[str, Any], description: str, *, required: list[str] | None = None
) -> dict[str, Any]:
    schema = {"type": "object", "description": description, "properties": properties}
    return {**schema, "required": required} if required else schema


def described(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """`schema` with a description (beside a `$ref`, which would hide one, through `allOf`)."""
    if "$ref" in schema:
        return {"description": text, "allOf": [schema]}
    return {**schema, "description": text}


def wire_tag(message_type: Any) -> str:
    """The tag a value of `message_type` travels with in replies ("" for plain data)."""
    if isinstance(message_type, type) and issubclass(message_type, Message):
        tag = message_type.__struct_config__.tag
        return tag if isinstance(tag, str) else ""
    return ""


def message_name(message_type: Any) -> str:
    """What a message is called in the document: its wire tag, else its type's name."""
    return wire_tag(message_type) or getattr(message_type, "__name__", None) or str(message_type)


def _message(
    message_type: Any,
    payload: dict[str, Any],
    *,
    description: str,
    headers: dict[str, Any] | None = None,
    content_type: str = MSGPACK,
) -> dict[str, Any]:
    message = {
        "name": message_name(message_type),
        "title": getattr(message_type, "__name__", message_name(message_type)),
        "contentType": content_type,
        "payload": payload,
    }
    summary = (getattr(message_type, "__doc__", None) or "").strip().split("\n")[0]
    if summary and isinstance(message_type, type) and issubclass(message_type, msgspec.Struct):
        message["summary"] = summary
    if headers is not None:
        message["headers"] = headers
    return {**message, "description": description}


def envelope(schemas: Schemas, message_type: Any) -> dict[str, Any]:
    """The request envelope of `message_type`: its metadata, then the message."""
    fields = schemas[EnvelopeMetadata]["items"]
    items = [described(s, text) for s, text in zip(fields, _ENVELOPE_FIELDS, strict=True)]
    items[0] = {"const": ENVELOPE_VERSION, "description": _ENVELOPE_FIELDS[0]}
    items.append(described(schemas[message_type], "The message."))
    return {
        "type": "array",
        "description": "The request envelope.",
        "items": items,
        "minItems": len(items),
        "maxItems": len(items),
    }


def reply_envelope(schemas: Schemas, message_type: Any, tag: str | None = None) -> dict[str, Any]:
    """`[tag, value]`: a reply, or a frame of one."""
    return {
        "type": "array",
        "items": [{"const": wire_tag(message_type) if tag is None else tag}, schemas[message_type]],
        "minItems": 2,
        "maxItems": 2,
    }


def request_message(schemas: Schemas, message_type: Any) -> dict[str, Any]:
    """An agent request: the envelope, or the bare message with headers."""
    payload = {"oneOf": [envelope(schemas, message_type), schemas[message_type]]}
    headers = {"$ref": f"{SCHEMAS}{REQUEST_HEADERS}"}
    return _message(message_type, payload, description=REQUEST_FORMS, headers=headers)


def reply_message(schemas: Schemas, message_type: Any, tag: str | None = None) -> dict[str, Any]:
    """An agent's reply (or its typed error), enveloped or bare."""
    tag = wire_tag(message_type) if tag is None else tag
    payload = {"oneOf": [reply_envelope(schemas, message_type, tag), schemas[message_type]]}
    headers = _object({REPLY_TYPE: {"const": tag}}, "On a bare reply: the value's wire tag.")
    return _message(message_type, payload, description=REPLY_FORMS, headers=headers)


def error_message(schemas: Schemas) -> dict[str, Any]:
    """The typed failure that any request may get instead of its reply."""
    return reply_message(schemas, ErrorReply, ERROR_TAG)


def chunk_message(schemas: Schemas, chunk_type: Any) -> dict[str, Any]:
    """A chunk of a streamed reply: `[Af-Chunk, [tag, chunk]]`, before the reply."""
    payload = {
        "type": "array",
        "items": [{"const": CHUNK_TAG}, reply_envelope(schemas, chunk_type)],
        "minItems": 2,
        "maxItems": 2,
    }
    text = f"To a request with `{STREAM_HEADER}: 1`: each chunk the handler emits, then the reply."
    return {**_message(chunk_type, payload, description=text), "name": CHUNK_TAG}


def frame_message(schemas: Schemas, message_type: Any, tag: str | None = None) -> dict[str, Any]:
    """A frame of a generation's answer: always a reply envelope."""
    payload = reply_envelope(schemas, message_type, tag)
    return _message(message_type, payload, description="A reply envelope `[tag, value]`.")


def generation_message(schemas: Schemas, message_type: Any) -> dict[str, Any]:
    """A generation request: always the envelope (the worker reads no headers)."""
    text = "The request envelope; the worker answers on the request's reply subject."
    return _message(message_type, envelope(schemas, message_type), description=text)


def bare_message(schemas: Schemas, message_type: Any, description: str) -> dict[str, Any]:
    """A message sent as its bare MessagePack encoding, without headers."""
    return _message(message_type, schemas[message_type], description=description)


def event_message(schemas: Schemas, event_type: Any, *, dead_letter: bool) -> dict[str, Any]:
    """An event (or its dead letter): the bare message, its metadata in headers."""
    name = DEAD_LETTER_HEADERS if dead_letter else EVENT_HEADERS
    text = (
        "The event as it was delivered (no body if that and the headers would exceed the"
        " server's max_payload: it stays in the event stream), with why it failed."
        if dead_letter
        else "The bare event; publishing is acknowledged by JetStream, deduplicated by id."
    )
    headers = {"$ref": f"{SCHEMAS}{name}"}
    return _message(event_type, schemas[event_type], description=text, headers=headers)


def json_message(schemas: Schemas, message_type: Any, description: str) -> dict[str, Any]:
    """A JSON message (what nats.micro answers)."""
    return _message(message_type, schemas[message_type], description=description, content_type=JSON)
