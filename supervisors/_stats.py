"""Frozen snapshots of a supervision tree, for health endpoints and `af.ctl` stats."""

from __future__ import annotations

import enum

import msgspec


class ChildStatus(enum.StrEnum):
    """Where a child is in its life."""

    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class IntensityWindow(msgspec.Struct, frozen=True, kw_only=True):
    """How much of the restart intensity is used right now."""

    restarts: int
    max_restarts: int
    period: float


class ChildStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One child of a supervisor.

    Attributes:
        supervisor: The child's own tree, when the child is a supervisor.
        queue_depth: Messages waiting, for agent children.
        detail: The child's own one-line state (a bridge's connection, say).
    """

    id: str
    kind: str
    restart: str
    status: ChildStatus
    restarts: int
    last_exit: str | None = None
    queue_depth: int | None = None
    pid: int | None = None
    detail: str | None = None
    supervisor: SupervisorStatistics | None = None


class SupervisorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A supervisor and, recursively, its children."""

    name: str
    strategy: str
    status: str
    intensity: IntensityWindow
    children: list[ChildStatistics]
    exit_reason: str | None = None
