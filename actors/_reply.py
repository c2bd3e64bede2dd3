"""A one-shot reply future: first writer wins, waiters wake at once."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from messages import RequestTimeout

T = TypeVar("T")


class Reply(Generic[T]):
    """The pending answer to one request.

    Args:
        deadline: Absolute time (epoch seconds) after which `get()` gives up.

    It is settled exactly once, by whoever comes first: the agent's handler,
    a kill that fails it, or a deadline check. Later attempts are ignored,
    which is what lets `Agent.kill` fail an in-flight request while its
    handler is still running.
    """

    __slots__ = (
        "_callbacks",
        "_error",
        "_guard",
        "_settled",
        "_value",
        "_waiter",
        "deadline",
        "on_chunk",
    )

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        # Set by a caller that takes the handler's intermediate chunks (`ctx.emit`).
        self.on_chunk: Callable[[Any], None] | None = None
        # One lock per reply: a blocking waiter's lock is made only when
        # someone waits (the bridges only add callbacks).
        self._guard = threading.Lock()
        self._settled = False
        self._waiter: threading.Lock | None = None
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Reply[T]], None]] | None = None

    def set(self, value: T) -> bool:
        """Settle with a value; return False if it was already settled."""
        return self._settle(value, None)

    def fail(self, error: BaseException) -> bool:
        """Settle with an error; return False if it was already settled."""
        return self._settle(None, error)

    def done(self) -> bool:
        """Whether the reply has been settled."""
        return self._settled

    def get(self, *, timeout: float | None = None) -> T:
        """Wait for the reply and return it, or raise the error it was settled with.

        Waits until the deadline, or `timeout` seconds if that comes first.

        Raises:
            RequestTimeout: If the wait ends before the reply.
        """
        if not self._settled:
            wait = self.deadline - time.time()
            if timeout is not None:
                wait = min(wait, timeout)
            self._wait(wait)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def _wait(self, wait: float) -> None:
        with self._guard:
            if self._settled:
                return
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = threading.Lock()
                waiter.acquire()
        if not waiter.acquire(timeout=-1 if wait == math.inf else max(wait, 0.0)):
            raise RequestTimeout(f"no reply within {max(wait, 0.0):.3f} s")
        waiter.release()  # the next waiter, if any, goes through too

    def add_done_callback(self, callback: Callable[[Reply[T]], None]) -> None:
        """Call `callback(self)` once settled (at once if it already is).

        The callback runs on the thread that settles the reply; it must be
        quick and must not block (the bridge uses it to hop onto its loop).
        """
        guard = self._guard
        guard.acquire()  # acquire/release, not `with`: on every request
        if not self._settled:
            if self._callbacks is None:
                self._callbacks = [callback]
            else:
                self._callbacks.append(callback)
            guard.release()
            return
        guard.release()
        callback(self)

    def _settle(self, value: T | None, error: BaseException | None) -> bool:
        guard = self._guard
        guard.acquire()
        if self._settled:
            guard.release()
            return False
        self._value, self._error, self._settled = value, error, True
        callbacks, self._callbacks = self._callbacks, None
        waiter = self._waiter
        guard.release()
        if waiter is not None:
            waiter.release()
        for callback in callbacks or ():
            callback(self)
        return True

    def result(self) -> Any:
        """Return the value or the error of a settled reply, without raising."""
        return self._error if self._error is not None else self._value
