"""A closable actor inbox: nothing sent after close is lost without an answer."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pykka import ActorDeadError
from pykka._envelope import Envelope

if TYPE_CHECKING:
    from actors._call import Call

# Returned by get() once the mailbox is closed and empty, so that an idle actor
# thread wakes up, sees that it was stopped, and exits.
WAKE_UP: Final = Envelope(None)


class Mailbox:
    """FIFO inbox for one actor, satisfying pykka's `ActorInbox` protocol.

    `close()` atomically refuses further puts and hands back what was queued;
    a put that loses the race against close is handed to `reject`,
    so the sender learns at once instead of waiting for its deadline.
    """

    __slots__ = ("_closed", "_items", "_lock", "_nonempty", "reject")

    def __init__(self) -> None:
        self._items: deque[Envelope[Any] | Call] = deque()
        self._lock = threading.Lock()
        self._nonempty = threading.Condition(self._lock)
        self._closed = False
        self.reject: Callable[[Envelope[Any] | Call], None] = _raise_dead

    def put(self, envelope: Envelope[Any], /) -> None:
        """Queue an envelope, or reject it if the mailbox is closed."""
        if not self.offer(envelope):
            self.reject(envelope)

    def offer(self, envelope: Envelope[Any] | Call, /) -> bool:
        """Queue an envelope; return False, queueing nothing, if closed."""
        with self._lock:
            if self._closed:
                return False
            self._items.append(envelope)
            self._nonempty.notify()
            return True

    def get(self) -> Envelope[Any] | Call:
        """Take the next envelope, waiting for one; `WAKE_UP` once closed."""
        with self._lock:
            while not self._items:
                if self._closed:
                    return WAKE_UP
                self._nonempty.wait()
            return self._items.popleft()

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> list[Envelope[Any] | Call]:
        """Refuse further puts and return what was queued, in order."""
        with self._lock:
            self._closed = True
            items = list(self._items)
            self._items.clear()
            self._nonempty.notify_all()
        return items

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed


def _raise_dead(envelope: Envelope[Any] | Call) -> None:
    msg = f"mailbox closed; {envelope!r} was not delivered"
    raise ActorDeadError(msg)
