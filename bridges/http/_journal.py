"""What a node did lately, for its dashboard: the last events and the last problems.

Two bounded rings, newest last. Events are what the node's event router
stored and settled (published, acked, redelivered, dead-lettered); problems
are its warnings and errors (the `actorfleet` loggers at WARNING and above)
and the requests its edges answered with a failure. Only names, subjects,
sequences and the loggers' own messages are kept, never a payload; each
text is cut to `TEXT_LIMIT` characters. Recording takes a lock for one
append, from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Final

import msgspec

JOURNAL_SIZE: Final = 50
"""Entries kept of each kind."""
TEXT_LIMIT: Final = 300
"""Characters kept of an entry's text."""
LOGGER: Final = "actorfleet"
"""The loggers whose warnings and errors are problems (this and its children)."""


class Happening(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the journal.

    Attributes:
        at: When, in seconds since the epoch.
        kind: What: `published`, `ack`, `nak`, `term`, `dead_letter` for
            events; `warning`, `error`, `critical` or `request` for problems.
        source: Where: an event's subject, a logger's name, an edge and agent type.
        text: What was said (cut to `TEXT_LIMIT` characters).
    """

    at: float
    kind: str
    source: str
    text: str


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


class Journal:
    """The node's recent events and problems.

    Args:
        size: Entries kept of each kind.
    """

    def __init__(self, size: int = JOURNAL_SIZE) -> None:
        self._lock = threading.Lock()
        self._events: deque[Happening] = deque(maxlen=size)
        self._problems: deque[Happening] = deque(maxlen=size)

    def event(self, kind: str, source: str, text: str = "") -> None:
        """Record something that happened to an event."""
        entry = Happening(at=time.time(), kind=kind, source=source, text=_cut(text))
        with self._lock:
            self._events.append(entry)

    def problem(self, kind: str, source: str, text: str) -> None:
        """Record a warning, an error or a failed request."""
        entry = Happening(at=time.time(), kind=kind, source=source, text=_cut(text))
        with self._lock:
            self._problems.append(entry)

    def events(self) -> list[Happening]:
        """The events kept, oldest first."""
        with self._lock:
            return list(self._events)

    def problems(self) -> list[Happening]:
        """The problems kept, oldest first."""
        with self._lock:
            return list(self._problems)

    def published(self, subject: str, sequence: int) -> None:
        """An event was stored (the event router's publish listener)."""
        self.event("published", subject, f"stream sequence {sequence}")

    def settled(self, subject: str, sequence: int, outcome: str) -> None:
        """A consumer settled an event (the event router's settle listener)."""
        self.event(str(outcome), subject, f"stream sequence {sequence}")

    def attach(self) -> logging.Handler:
        """Record the `actorfleet` loggers' warnings and errors; returns the handler added."""
        handler = _JournalHandler(self)
        logging.getLogger(LOGGER).addHandler(handler)
        return handler

    @staticmethod
    def detach(handler: logging.Handler) -> None:
        """Stop recording through `handler` (from `attach`)."""
        logging.getLogger(LOGGER).removeHandler(handler)


class _JournalHandler(logging.Handler):
    def __init__(self, journal: Journal) -> None:
        super().__init__(logging.WARNING)
        self.journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the message
            text = str(record.msg)
        self.journal.problem(record.levelname.lower(), record.name, text)
