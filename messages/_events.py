"""Supervision events: what supervisors report as children start, exit and restart.

Supervisors publish these to the node's event bus (and later to NATS), so that
operators and tests can follow the tree without polling it.
"""

from __future__ import annotations

import enum

from messages._base import Message


class ExitKind(enum.StrEnum):
    """Why a child stopped, in Erlang's terms.

    `normal` and `shutdown` are normal exits: a `transient` child is not
    restarted after them. Every other kind is abnormal.
    """

    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    KILLED = "killed"
    HUNG = "hung"

    @property
    def is_normal(self) -> bool:
        """Whether a `transient` child that exits this way stays down."""
        return self in {ExitKind.NORMAL, ExitKind.SHUTDOWN}


class ChildStarted(Message, frozen=True, kw_only=True):
    """A supervisor started a child (first start or restart)."""

    supervisor: str
    child_id: str
    kind: str
    incarnation: int


class ChildExited(Message, frozen=True, kw_only=True):
    """A child stopped on its own (not by the supervisor's hand)."""

    supervisor: str
    child_id: str
    reason: ExitKind
    detail: str = ""


class ChildRestarted(Message, frozen=True, kw_only=True):
    """A supervisor replaced a child that exited.

    Attributes:
        restarts: How many times this child has been restarted in all.
        delay: Seconds the restart waited (backoff).
    """

    supervisor: str
    child_id: str
    restarts: int
    delay: float


class Escalated(Message, frozen=True, kw_only=True):
    """A supervisor exceeded its restart intensity, stopped its children and exited."""

    supervisor: str
    restarts: int
    period: float


SupervisionEvent = ChildStarted | ChildExited | ChildRestarted | Escalated
