from __future__ import annotations

from typing import Any

from actors import LocalAgentRef, Runtime
from messages import ChildRestarted, ChildStarted
from supervisors import Backoff, Restart, Strategy, Supervisor, SupervisorSpec, agent_child
from tests.agents import RecordingAgent
from tests.conftest import EventRecorder

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
