from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from actors import ExitLink, ExitListener, ExitReason, LocalAgentRef, Runtime, TimerHandle
from messages import ChildRestarted, ChildStarted, ExitKind
from supervisors import Backoff, Restart, Strategy, Supervisor, SupervisorSpec, agent_child
from tests.agents import RecordingAgent
from tests.conftest import WAIT, EventRecorder

NO_BACKOFF = Backoff(base=0.0, cap=0.0, jitter=0.0)


def pool(
    runtime: Runtime,
    *,
    name: str = "sup",
    n: int = 3,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    restarts: list[Restart] | None = None,
    **spec: Any,
) -> Supervisor:
    types = restarts or [Restart.PERMANENT] * n
    children = [
        agent_child(RecordingAgent, runtime, id=f"w{i}", restart=types[i], shutdown=5)
        for i in range(len(types))
    ]
    spec.setdefault("backoff", NO_BACKOFF)
    return Supervisor.start(
        SupervisorSpec(name=name, strategy=strategy, children=children, **spec), runtime
    )


def agent(supervisor: Supervisor, child_id: str) -> LocalAgentRef:
    handle = supervisor.which_children()[child_id]
    assert isinstance(handle, LocalAgentRef)
    return handle


def restarted(events: EventRecorder, child_id: str, *, count: int = 1) -> list[Any]:
    return events.wait_for(
        lambda e: isinstance(e, ChildRestarted) and e.child_id == child_id, count=count
    )


def starts_after(events: EventRecorder, index: int) -> list[str]:
    return [e.child_id for e in events.events[index:] if isinstance(e, ChildStarted)]


class ManualTimers:
    """Stands in for `runtime.timers`: calls run only when the test fires them."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, TimerHandle]] = []

    def call_at(self, when: float, fn: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(when, fn)
        self.scheduled.append((when, handle))
        return handle

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return self.call_at(time.monotonic() + delay, fn)

    def fire(self, index: int) -> None:
        """Run the `index`-th call scheduled so far (even a second time)."""
        _, handle = self.scheduled[index]
        if not handle.cancelled:
            handle.fn()

    def close(self, *, timeout: float = 0.0) -> None:
        self.scheduled.clear()


class HangingChild:
    """A child whose graceful stop hangs, ignoring its timeout, until `release` is set."""

    def __init__(self) -> None:
        self.exit_link = ExitLink()
        self.release = threading.Event()
        self.stop_asked = threading.Event()

    @property
    def alive(self) -> bool:
        return not self.exit_link.exited

    def link(self, listener: ExitListener) -> None:
        self.exit_link.link(listener)

    def shutdown(self, *, timeout: float) -> None:
        self.stop_asked.set()
        self.release.wait(WAIT)  # bounded, so that a broken test cannot hang the run

    def kill(self) -> None:
        self.exit_link.exit(ExitReason(ExitKind.KILLED))
