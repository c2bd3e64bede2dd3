"""Agents the HTTP tests serve (importable by path from settings)."""

from __future__ import annotations

import threading
import time
from typing import Annotated, ClassVar

import msgspec

from actors import Agent, Context, handler
from messages import (
    BadRequest,
    Forbidden,
    Message,
    NotFound,
    Overloaded,
    RequestTimeout,
    Unavailable,
)


class Say(Message, frozen=True, kw_only=True):
    """Say `text` back, after `delay` seconds."""

    text: Annotated[str, msgspec.Meta(max_length=10_000)]
    delay: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.0


class FailWith(Message, frozen=True, kw_only=True):
    """FailWith with the typed error `code` (or crash)."""

    code: str


class Said(Message, frozen=True, kw_only=True):
    text: str
    handled_by: str


_ERRORS = {
    "bad_request": BadRequest("no good"),
    "forbidden": Forbidden("not yours"),
    "not_found": NotFound("no such thing"),
    "overloaded": Overloaded("busy", retry_after=2.5),
    "timeout": RequestTimeout("too slow"),
    "unavailable": Unavailable("gone"),
}


class EchoAgent(Agent):
    """Echoes text; fails on request."""

    agent_type = "echo"
    handled: ClassVar[list[str]] = []
    started: ClassVar[threading.Event] = threading.Event()

    @handler
    def echo(self, msg: Say, ctx: Context) -> Said:
        EchoAgent.started.set()
        if msg.delay:
            time.sleep(msg.delay)
        EchoAgent.handled.append(msg.text)
        return Said(text=msg.text, handled_by=self.name)

    @handler
    def fail(self, msg: FailWith, ctx: Context) -> Said:
        error = _ERRORS.get(msg.code)
        if error is None:
            raise RuntimeError("secret internals /etc/passwd")
        raise error
