"""Exit reasons and links: how a child tells its supervisor that it stopped."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import msgspec

from messages import ExitKind


class ExitReason(msgspec.Struct, frozen=True):
    """Why a child stopped.

    Attributes:
        kind: Erlang-style exit kind; `normal` and `shutdown` are normal.
        detail: Free text (exception repr, exit code, ...).
    """

    kind: ExitKind
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else str(self.kind)


ExitListener = Callable[[ExitReason], None]

NORMAL = ExitReason(ExitKind.NORMAL)


class ExitLink:
    """A one-shot exit notice from a child to every party linked to it.

    Linking after the child has exited delivers the exit at once, as linking
    to a dead process does in Erlang, so a child that dies while it is being
    started is never missed. Listeners run in the order they linked.
    """

    __slots__ = ("_exited", "_listeners", "_lock", "_once", "reason")

    def __init__(self) -> None:
        self._exited = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[ExitListener] = []
        self._once = itertools.count()
        self.reason: ExitReason | None = None

    def link(self, listener: ExitListener) -> None:
        """Call `listener(reason)` when the child exits (now, if it has)."""
        with self._lock:
            reason = self.reason
            if reason is None:
                self._listeners.append(listener)
                return
        listener(reason)

    def exit(self, reason: ExitReason) -> bool:
        """Record the exit and notify the listeners; only the first call counts."""
        if next(self._once):
            return False
        with self._lock:
            self.reason = reason
            listeners, self._listeners = self._listeners, []
        self._exited.set()
        for listener in listeners:
            listener(reason)
        return True

    def wait(self, *, timeout: float | None = None) -> bool:
        """Wait until the child exits; return whether it did within `timeout`.

        `math.inf` (or anything past what a thread can wait) waits without a bound.
        """
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            timeout = None
        return self._exited.wait(timeout)

    @property
    def exited(self) -> bool:
        """Whether the child has exited."""
        return self.reason is not None
