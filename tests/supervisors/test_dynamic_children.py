"""Dynamic children: pools grown and shrunk at run time (OTP start_child & co)."""

from __future__ import annotations

import pytest

from actors import Runtime
from messages import (
    ChildAlreadyExists,
    ChildNotFound,
    ChildStarted,
    StartFailed,
    SupervisorStopped,
)
from supervisors import (
    ChildSpec,
    ChildStatus,
    Restart,
    Supervisor,
    SupervisorSpec,
    agent_child,
)
from tests.agents import Echo, WorkerAgent
from tests.conftest import EventRecorder
from tests.supervisors.helpers import agent, pool, restarted


def _boom() -> WorkerAgent:
    msg = "no resources"
    raise OSError(msg)


def test_start_child_adds_a_member_that_serves_at_once(runtime: Runtime) -> None:
    sup = pool(runtime, n=0)
    sup.start_child(agent_child(WorkerAgent, runtime, id="extra"))
    assert runtime.ref("worker").ask(Echo(text="x")).by == "worker/extra"


def test_start_child_with_a_taken_id_is_refused(runtime: Runtime) -> None:
    sup = pool(runtime, n=1)
    with pytest.raises(ChildAlreadyExists):
        sup.start_child(agent_child(WorkerAgent, runtime, id="w0"))


def test_a_child_that_fails_to_start_raises_and_leaves_the_supervisor_running(
    runtime: Runtime,
) -> None:
    sup = pool(runtime, n=1)
    with pytest.raises(StartFailed, match="no resources"):
        sup.start_child(ChildSpec(id="bad", start=_boom))  # type: ignore[arg-type]
    assert sup.alive
    assert list(sup.which_children()) == ["w0"]


def test_terminate_child_stops_it_for_good_until_restart_child(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=2)
    old = agent(sup, "w0")
    sup.terminate_child("w0")
    assert not old.alive
    assert [c.status for c in sup.statistics().children] == [
        ChildStatus.STOPPED,
        ChildStatus.RUNNING,
    ]
    new = sup.restart_child("w0")
    assert new.alive
    starts = [e for e in events.of(ChildStarted) if e.child_id == "w0"]
    assert [e.incarnation for e in starts] == [1, 2]


def test_terminate_child_of_a_temporary_child_forgets_its_spec(runtime: Runtime) -> None:
    sup = pool(runtime, restarts=[Restart.TEMPORARY, Restart.PERMANENT])
    old = agent(sup, "w0")
    sup.terminate_child("w0")
    assert not old.alive
    with pytest.raises(ChildNotFound):
        sup.restart_child("w0")
    assert list(sup.which_children()) == ["w1"]
    assert [c.id for c in sup.statistics().children] == ["w1"]


def test_delete_child_forgets_a_terminated_child(runtime: Runtime) -> None:
    sup = pool(runtime, n=2)
    with pytest.raises(ChildAlreadyExists):
        sup.delete_child("w0")
    sup.terminate_child("w0")
    sup.delete_child("w0")
    assert [c.id for c in sup.statistics().children] == ["w1"]


def test_unknown_child_ids_raise_child_not_found(runtime: Runtime) -> None:
    sup = pool(runtime, n=1)
    for call in (sup.terminate_child, sup.restart_child, sup.delete_child):
        with pytest.raises(ChildNotFound):
            call("ghost")


def test_an_initial_child_that_fails_to_start_stops_the_ones_before_it(
    runtime: Runtime,
) -> None:
    first = agent_child(WorkerAgent, runtime, id="first")
    spec = SupervisorSpec(
        name="s",
        children=[first, ChildSpec(id="bad", start=_boom)],  # type: ignore[arg-type]
    )
    with pytest.raises(StartFailed):
        Supervisor.start(spec, runtime)
    assert runtime.directory.members("worker") == ()


def test_a_dynamically_added_child_is_supervised_like_the_others(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=0)
    sup.start_child(agent_child(WorkerAgent, runtime, id="dyn"))
    sup.which_children()["dyn"].kill()
    restarted(events, "dyn")


def test_calls_to_a_stopped_supervisor_raise_supervisor_stopped(runtime: Runtime) -> None:
    sup = pool(runtime, n=1)
    sup.shutdown()
    with pytest.raises(SupervisorStopped):
        sup.which_children()
