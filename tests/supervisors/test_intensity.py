"""Restart intensity and escalation to the parent."""

from __future__ import annotations

import time

from actors import Runtime
from messages import ChildExited, Escalated, ExitKind
from supervisors import (
    ChildStatus,
    Strategy,
    Supervisor,
    SupervisorSpec,
    agent_child,
    supervisor_child,
)
from tests.agents import WorkerAgent
from tests.conftest import EventRecorder
from tests.supervisors.helpers import NO_BACKOFF, agent, pool, restarted


def test_restarts_up_to_max_restarts_within_the_period_are_allowed(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=1, max_restarts=3, period=60)
    for i in range(3):
        agent(sup, "w0").kill()
        restarted(events, "w0", count=i + 1)
    assert sup.alive
    assert sup.statistics().intensity.restarts == 3


def test_exceeding_max_restarts_stops_all_children_and_the_supervisor(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=2, max_restarts=2, period=60)
    others = sup.which_children()["w1"]
    for i in range(2):
        agent(sup, "w0").kill()
        restarted(events, "w0", count=i + 1)
    agent(sup, "w0").kill()
    reason = sup.wait(timeout=5)
    assert reason is not None
    assert reason.kind is ExitKind.SHUTDOWN
    assert "intensity" in reason.detail
    assert not others.alive
    (escalated,) = events.of(Escalated)
    assert escalated.supervisor == "sup"


def test_max_restarts_zero_escalates_on_the_first_failure(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=1, max_restarts=0)
    agent(sup, "w0").kill()
    assert sup.wait(timeout=5) is not None
    events.wait_for(lambda e: isinstance(e, Escalated))


def test_restarts_older_than_the_period_no_longer_count(
    runtime: Runtime, events: EventRecorder
) -> None:
    period = 0.05
    sup = pool(runtime, n=1, max_restarts=1, period=period)
    agent(sup, "w0").kill()
    restarted(events, "w0")
    time.sleep(period * 2)  # the passing of the period is what is under test
    agent(sup, "w0").kill()
    restarted(events, "w0", count=2)
    assert sup.alive


def test_an_escalating_child_supervisor_is_restarted_by_its_parent(
    runtime: Runtime, events: EventRecorder
) -> None:
    inner = SupervisorSpec(
        name="inner",
        children=[agent_child(WorkerAgent, runtime, id="leaf")],
        max_restarts=0,
        backoff=NO_BACKOFF,
    )
    outer = Supervisor.start(
        SupervisorSpec(
            name="outer", children=[supervisor_child(inner, runtime)], backoff=NO_BACKOFF
        ),
        runtime,
    )
    first_inner = outer.which_children()["inner"]
    assert isinstance(first_inner, Supervisor)
    leaf = first_inner.which_children()["leaf"]
    leaf.kill()
    events.wait_for(lambda e: isinstance(e, Escalated) and e.supervisor == "inner")
    restarted(events, "inner")
    second_inner = outer.which_children()["inner"]
    assert second_inner is not first_inner
    assert isinstance(second_inner, Supervisor)
    assert second_inner.which_children()["leaf"].alive
    exits = [e for e in events.of(ChildExited) if e.child_id == "inner"]
    assert [e.reason for e in exits] == [ExitKind.SHUTDOWN]


def test_escalation_climbs_until_a_supervisor_can_absorb_it(
    runtime: Runtime, events: EventRecorder
) -> None:
    inner = SupervisorSpec(
        name="inner", children=[agent_child(WorkerAgent, runtime, id="leaf")], max_restarts=0
    )
    middle = SupervisorSpec(
        name="middle", children=[supervisor_child(inner, runtime)], max_restarts=0
    )
    top = Supervisor.start(
        SupervisorSpec(
            name="top", children=[supervisor_child(middle, runtime)], backoff=NO_BACKOFF
        ),
        runtime,
    )
    middle_sup = top.which_children()["middle"]
    assert isinstance(middle_sup, Supervisor)
    inner_sup = middle_sup.which_children()["inner"]
    assert isinstance(inner_sup, Supervisor)
    inner_sup.which_children()["leaf"].kill()
    escalations = events.wait_for(lambda e: isinstance(e, Escalated), count=2)
    assert [e.supervisor for e in escalations] == ["inner", "middle"]  # type: ignore[attr-defined]
    restarted(events, "middle")
    assert top.alive
    tree = top.statistics()
    assert tree.children[0].status is ChildStatus.RUNNING
    assert tree.children[0].supervisor is not None
    assert tree.children[0].supervisor.children[0].supervisor is not None


def test_a_one_for_all_group_restart_counts_once_toward_intensity(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=3, strategy=Strategy.ONE_FOR_ALL, max_restarts=1, period=60)
    agent(sup, "w0").kill()
    restarted(events, "w2")
    assert sup.alive
    assert sup.statistics().intensity.restarts == 1
