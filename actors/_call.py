"""The in-process form of a request: message, metadata, where to reply, default deadlines."""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Final

import msgspec

from actors._reply import Reply
from messages import Metadata, Priority, new_message_id

DEFAULT_ASK_TIMEOUT: Final = 30.0
DEFAULT_HUNG_MARGIN: Final = 5.0


class AgentDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """Defaults applied to every agent of a runtime.

    Attributes:
        ask_timeout: Deadline, in seconds from now, of an ask that names none.
        hung_margin: Seconds past its deadline after which a still-running
            handler counts as hung: the agent is replaced and its queue fails.
    """

    ask_timeout: float = DEFAULT_ASK_TIMEOUT
    hung_margin: float = DEFAULT_HUNG_MARGIN


class Call:
    """One request or tell on its way to an agent's mailbox.

    It doubles as its own mailbox envelope (`message` is the call itself and
    `reply_to` is None), so a request costs one allocation, not two.
    """

    __slots__ = ("meta", "payload", "reply", "taken")

    reply_to: ClassVar[None] = None

    def __init__(self, payload: Any, meta: Metadata, reply: Reply[Any] | None) -> None:
        self.payload = payload
        self.meta = meta
        self.reply = reply
        # Set once an agent takes it out of its mailbox: no deadline timer fails it then.
        self.taken = False

    @property
    def message(self) -> Call:
        """The envelope's message: the call itself."""
        return self


def make_metadata(
    *,
    default_timeout: float,
    timeout: float | None,
    deadline: float | None,
    priority: Priority | None,
    message_id: str | None,
    correlation_id: str | None,
    sender: str | None,
    cause: Metadata | None = None,
) -> Metadata:
    """Build a request's metadata.

    The deadline is the earliest of `deadline`, now + `timeout` and the
    cause's deadline (the runtime default when none is given). A request
    made while handling `cause` inherits its priority and trace context and
    names it as its correlation id, unless told otherwise, and acts for
    the cause's principal.
    """
    if cause is not None:
        deadline = cause.deadline if deadline is None else min(deadline, cause.deadline)
        priority = priority or cause.priority
        correlation_id = correlation_id or cause.id
    if timeout is None and deadline is None:
        timeout = default_timeout
    limit = math.inf if deadline is None else deadline
    if timeout is not None:
        limit = min(limit, time.time() + timeout)
    return Metadata(
        id=message_id or new_message_id(),
        deadline=limit,
        correlation_id=correlation_id,
        priority=priority or Priority.DEFAULT,
        sender=sender,
        traceparent=None if cause is None else cause.traceparent,
        tracestate=None if cause is None else cause.tracestate,
        principal=None if cause is None else cause.principal,
    )
