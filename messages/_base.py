"""Struct conventions shared by every wire message."""

from __future__ import annotations

import enum
import itertools
import os
from typing import Final

import msgspec

from messages._errors import BadRequest

_ID_PREFIX: Final = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_message_id() -> str:
    """Return a message id unique across processes and cheap to make.

    A random per-process prefix followed by a counter, in the spirit of NATS's
    NUID: unique without a syscall per id.
    """
    return f"{_ID_PREFIX}{next(_id_counter):x}"


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every wire message: frozen, keyword-only, tagged by class name.

    Subclasses add fields with defaults to evolve; they never forbid unknown
    fields, so older readers accept newer writers.
    """


class Priority(enum.StrEnum):
    """How much a request matters when the service must shed load."""

    CRITICAL = "critical"
    DEFAULT = "default"
    SHEDDABLE = "sheddable"


class Event(Message, frozen=True, kw_only=True):
    """Base of domain events: facts published to JetStream (`af.evt.<Event>`).

    An agent subscribes to an event type by declaring a handler for it.
    Delivery is at-least-once, so handlers must be idempotent; the
    handler's `ctx.delivery` says how many times this event has been
    delivered.
    """


def require_event(value: object) -> Event:
    """Return `value` if it is an `Event`.

    Raises:
        BadRequest: If it is anything else (only events can be published).
    """
    if not isinstance(value, Event):
        msg = f"only a messages.Event can be published, not {type(value).__name__}"
        raise BadRequest(msg)
    return value


def message_types() -> dict[str, type[Message]]:
    """Every `Message` subclass defined so far, by its wire tag."""
    found: dict[str, type[Message]] = {}
    pending: list[type[Message]] = [Message]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            tag = sub.__struct_config__.tag
            if isinstance(tag, str):
                found[tag] = sub
            pending.append(sub)
    return found
