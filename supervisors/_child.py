"""The supervisor's record of one child, and its statistics."""

from __future__ import annotations

import math

from actors import ExitReason, LocalAgentRef
from supervisors._spec import ChildHandle, ChildSpec
from supervisors._stats import ChildStatistics, ChildStatus


class Child:
    """The supervisor's record of one child (mutated only on the supervisor's thread).

    Attributes:
        due: While a restart is pending, the monotonic time it may run at.
        delay: The backoff that pending restart waits out, for `ChildRestarted`.
        timer: Stamps the delayed-restart timer armed last; an older one is stale.
    """

    __slots__ = (
        "consecutive",
        "delay",
        "due",
        "handle",
        "incarnation",
        "last_exit",
        "last_restart",
        "restarts",
        "spec",
        "status",
        "timer",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.handle: ChildHandle | None = None
        self.incarnation = 0
        self.status = ChildStatus.STOPPED
        self.restarts = 0
        self.consecutive = 0
        self.last_restart = -math.inf
        self.last_exit: ExitReason | None = None
        self.due: float | None = None
        self.delay = 0.0
        self.timer = 0

    def plan_restart(self, due: float, delay: float) -> bool:
        """Mark the child to be restarted at `due`; False if it already waits as long."""
        if self.due is not None and self.due >= due:
            return False
        self.due = due
        self.delay = delay
        self.status = ChildStatus.RESTARTING
        self.timer += 1
        return True

    def cancel_restart(self) -> None:
        """Forget a pending restart; its timer, if any, becomes stale."""
        self.due = None

    def statistics(self) -> ChildStatistics:
        """A frozen snapshot of the child."""
        handle = self.handle
        return ChildStatistics(
            id=self.spec.id,
            kind=self.spec.kind,
            restart=self.spec.restart,
            status=self.status,
            restarts=self.restarts,
            last_exit=None if self.last_exit is None else str(self.last_exit),
            queue_depth=handle.queue_depth if isinstance(handle, LocalAgentRef) else None,
            pid=_process_id(handle),
            detail=handle.detail if isinstance(handle, LocalAgentRef) else None,
        )


def _process_id(handle: ChildHandle | None) -> int | None:
    """The OS process a child runs as: any handle with an integer `pid` (a `ProcessChild`)."""
    pid = getattr(handle, "pid", None)
    return pid if isinstance(pid, int) else None
