"""A one-shot reply future: first writer wins, waiters wake at once."""

from __future__ import annotations

import itertools
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
        "_done",
        "_error",
        "_guard",
        "_once",
        "_value",
        "deadline",
        "on_chunk",
    )

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        # Set by a caller that takes the handler's intermediate chunks (`ctx.emit`).
        self.on_chunk: Callable[[Any], None] | None = None
        self._once = itertools.count()
        self._done = threading.Lock()
        self._done.acquire()
        self._guard = threading.Lock()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Reply[T]], None]] | None = None

    def set(self, value: T) -> bool:
        """Settle with a value; return False if it was already settled."""
        if next(self._once):
            return False
        self._value = value
        self._finish()
        return True

    def fail(self, error: BaseException) -> bool:
        """Settle with an error; return False if it was already settled."""
        if next(self._once):
            return False
        self._error = error
        self._finish()
        return True

    def done(self) -> bool:
        """Whether the reply has been settled."""
        return not self._done.locked()

    def get(self, *, timeout: float | None = None) -> T:
        """Wait for the reply and return it, or raise the error it was settled with.

        Waits until the deadline, or `timeout` seconds if that comes first.

        Raises:
            RequestTimeout: If the wait ends before the reply.
        """
        wait = self.deadline - time.time()
        if timeout is not None:
            wait = min(wait, timeout)
        if not self._done.acquire(timeout=-1 if wait == math.inf else max(wait, 0.0)):
            raise RequestTimeout(f"no reply within {max(wait, 0.0):.3f} s")
        self._done.release()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def add_done_callback(self, callback: Callable[[Reply[T]], None]) -> None:
        """Call `callback(self)` once settled (at once if it already is).

        The callback runs on the thread that settles the reply; it must be
        quick and must not block (the bridge uses it to hop onto its loop).
        """
        with self._guard:
            if not self.done():
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        callback(self)

    def _finish(self) -> None:
        with self._guard:
            self._done.release()
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    def result(self) -> Any:
        """Return the value or the error of a settled reply, without raising."""
        return self._error if self._error is not None else self._value
