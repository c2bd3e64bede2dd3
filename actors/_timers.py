"""One timer thread per runtime: call functions at given monotonic times."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

logger: Final = logging.getLogger("actorfleet.timers")


class TimerHandle:
    """A scheduled call; `cancel()` stops it from running."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Prevent the call if it has not run yet."""
        self.cancelled = True


class Timers:
    """A heap of timed calls served by one thread that sleeps until the next one.

    The thread is woken by a condition when an earlier call is scheduled, so
    nothing polls. Calls run on the timer thread and must be quick: they
    usually `tell` an actor.
    """

    def __init__(self, name: str = "actorfleet-timers") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> TimerHandle:
        """Run `fn` at monotonic time `when`."""
        handle = TimerHandle(when, fn)
        with self._cond:
            if self._closed:
                return handle
            heapq.heappush(self._heap, (when, next(self._seq), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        """Run `fn` after `delay` seconds."""
        return self.call_at(time.monotonic() + delay, fn)

    def close(self, *, timeout: float = 2.0) -> None:
        """Stop the thread; pending calls are dropped."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    # An absurd (or infinite) delay waits as long as a wait may.
                    self._cond.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                if self._closed:
                    return
                _, _, handle = heapq.heappop(self._heap)
            if not handle.cancelled:
                try:
                    handle.fn()
                except Exception:
                    logger.exception("timer callback %r failed", handle.fn)
