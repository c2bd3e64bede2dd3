"""The in-process form of a request: message, metadata and where to reply."""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

from actors._reply import Reply
from messages import Metadata, Priority, new_message_id


class Call:
    """One request or tell on its way to an agent's mailbox.

    It doubles as its own pykka envelope (`message` is the call itself and
    `reply_to` is None), so a request costs one allocation, not two.
    """

    __slots__ = ("meta", "payload", "reply")

    reply_to: ClassVar[None] = None

    def __init__(self, payload: Any, meta: Metadata, reply: Reply[Any] | None) -> None:
        self.payload = payload
        self.meta = meta
        self.reply = reply

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
) -> Metadata:
    """Build a request's metadata; the deadline is the earlier of the two given."""
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
    )
