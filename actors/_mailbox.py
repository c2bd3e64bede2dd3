"""A closable actor inbox: nothing sent after close is lost without an answer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pykka import ActorDeadError
from pykka._envelope import Envelope

if TYPE_CHECKING:
    from actors._call import Call

# Queued by close(), so that an idle actor thread wakes up, sees that it was
# stopped, and exits.
WAKE_UP: Final = Envelope(None)


class Mailbox:
    """FIFO inbox for one actor, satisfying pykka's `ActorInbox` protocol.

    `close()` atomically refuses further puts and hands back what was queued;
    a put that loses the race against close is handed to `reject`, so the
    sender learns at once instead of waiting for its deadline.

    The queue is the C `SimpleQueue`: the single consumer blocks in C, and
    producers only take a short lock to check `closed`.
    """

    __slots__ = ("_closed", "_lock", "_queue", "reject")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Envelope[Any] | Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
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
            self._queue.put(envelope)
            return True

    def get(self) -> Envelope[Any] | Call:
        """Take the next envelope, waiting for one (`WAKE_UP` once closed)."""
        return self._queue.get()

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return self._queue.empty()

    def __len__(self) -> int:
        return self._queue.qsize()

    def close(self) -> list[Envelope[Any] | Call]:
        """Refuse further puts and return what was queued, in order."""
        items: list[Envelope[Any] | Call] = []
        with self._lock:
            if self._closed:
                return items
            self._closed = True
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._queue.put(WAKE_UP)
        return items

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed


def _raise_dead(envelope: Envelope[Any] | Call) -> None:
    msg = f"mailbox closed; {envelope!r} was not delivered"
    raise ActorDeadError(msg)
