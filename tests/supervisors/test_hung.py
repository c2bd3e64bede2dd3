from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import AgentDefaults, Runtime
from messages import AgentStopped, ChildExited, ExitKind
from supervisors import Supervisor, SupervisorSpec, agent_child
from tests.agents import Block, Echo, WorkerAgent, gate
from tests.conftest import EventRecorder
from tests.supervisors.helpers import NO_BACKOFF, restarted


@pytest.fixture
def hung_runtime() -> Iterator[Runtime]:
    rt = Runtime(node="hung", defaults=AgentDefaults(ask_timeout=5, hung_margin=0.02))
    yield rt
    rt.close()


def test_a_hung_agent_is_replaced_and_its_queue_fails(hung_runtime: Runtime) -> None:
    events = EventRecorder()
    hung_runtime.events.subscribe(events)
    sup = Supervisor.start(
        SupervisorSpec(
            name="s", children=[agent_child(WorkerAgent, hung_runtime, id="w")], backoff=NO_BACKOFF
        ),
        hung_runtime,
    )
    stuck_ref = sup.which_children()["w"]
    entered, release = gate("hung-sup")
    stuck_ref.ask_async(Block(gate="hung-sup"), timeout=0.01)  # type: ignore[attr-defined]
    assert entered.wait(5)
    queued = stuck_ref.ask_async(Echo(text="queued"))  # type: ignore[attr-defined]
    (exited,) = events.wait_for(lambda e: isinstance(e, ChildExited))
    assert isinstance(exited, ChildExited)
    assert exited.reason is ExitKind.HUNG
    with pytest.raises(AgentStopped):
        queued.get(timeout=1)
    restarted(events, "w")
    assert hung_runtime.ref("worker").ask(Echo(text="fresh")).text == "fresh"
    release.set()
