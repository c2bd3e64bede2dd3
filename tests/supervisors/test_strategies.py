"""Restart strategies, as the Erlang/OTP supervisor documentation describes them."""

from __future__ import annotations

import pytest

from actors import Runtime
from messages import ChildExited, ExitKind
from supervisors import (
    Backoff,
    ChildHandle,
    ChildSpec,
    ChildStatus,
    Strategy,
    Supervisor,
    SupervisorSpec,
    agent_child,
)
from tests.agents import STOPPED, Echo, RecordingAgent
from tests.conftest import EventRecorder
from tests.supervisors.helpers import ManualTimers, agent, pool, restarted, starts_after

SLOW_BACKOFF = Backoff(base=1.0, factor=2, cap=10.0, jitter=0, reset_after=60)


class FlakyStart:
    """Starts a recording agent, except for the next `failures` starts, which fail."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.failures = 0

    def __call__(self) -> ChildHandle:
        if self.failures:
            self.failures -= 1
            msg = "not ready yet"
            raise OSError(msg)
        return RecordingAgent.spawn(self.runtime, instance="flaky")


def test_one_for_one_restarts_only_the_child_that_died(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, strategy=Strategy.ONE_FOR_ONE)
    before = sup.which_children()
    agent(sup, "w1").kill()
    restarted(events, "w1")
    after = sup.which_children()
    assert after["w0"] is before["w0"]
    assert after["w2"] is before["w2"]
    assert after["w1"] is not before["w1"]
    assert after["w1"].alive


def test_the_restarted_child_keeps_its_name_and_serves(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime)
    old = agent(sup, "w0")
    old.kill()
    restarted(events, "w0")
    new = agent(sup, "w0")
    assert new.name == old.name == "recording/w0"
    assert new.ask(Echo(text="back")).by == "recording/w0"


def test_one_for_all_stops_the_others_in_reverse_order_and_restarts_all_in_order(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=4, strategy=Strategy.ONE_FOR_ALL)
    before = sup.which_children()
    STOPPED.clear()
    mark = len(events.events)
    agent(sup, "w2").kill()
    restarted(events, "w3")
    assert STOPPED == ["recording/w3", "recording/w1", "recording/w0"]
    assert starts_after(events, mark) == ["w0", "w1", "w2", "w3"]
    after = sup.which_children()
    assert all(after[i] is not before[i] for i in before)


def test_rest_for_one_restarts_the_child_and_those_started_after_it(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=4, strategy=Strategy.REST_FOR_ONE)
    before = sup.which_children()
    STOPPED.clear()
    mark = len(events.events)
    agent(sup, "w1").kill()
    restarted(events, "w3")
    assert STOPPED == ["recording/w3", "recording/w2"]
    assert starts_after(events, mark) == ["w1", "w2", "w3"]
    after = sup.which_children()
    assert after["w0"] is before["w0"]
    assert all(after[i] is not before[i] for i in ("w1", "w2", "w3"))


def test_children_stopped_by_the_strategy_are_not_reported_as_exits(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, strategy=Strategy.ONE_FOR_ALL)
    agent(sup, "w0").kill()
    restarted(events, "w2")
    exits = events.of(ChildExited)
    assert [(e.child_id, e.reason) for e in exits] == [("w0", ExitKind.KILLED)]


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_a_group_restart_stops_at_a_child_that_fails_to_start_until_its_retry(
    runtime: Runtime, events: EventRecorder, manual_timers: ManualTimers, strategy: Strategy
) -> None:
    flaky = FlakyStart(runtime)
    children = [
        agent_child(RecordingAgent, runtime, id="w0"),
        ChildSpec(id="flaky", start=flaky),
        agent_child(RecordingAgent, runtime, id="w2"),
    ]
    sup = Supervisor.start(
        SupervisorSpec(
            name="sup",
            strategy=strategy,
            children=children,
            max_restarts=10,
            period=60,
            backoff=SLOW_BACKOFF,
        ),
        runtime,
    )
    flaky.failures = 2  # the first retry is immediate; the second waits out a backoff
    mark = len(events.events)
    agent(sup, "w0").kill()  # tells the supervisor before it returns
    statuses = {c.id: c.status for c in sup.statistics().children}
    assert statuses["flaky"] is ChildStatus.RESTARTING
    assert statuses["w2"] is ChildStatus.RESTARTING, "started while the child before it was down"
    first_of_group = ChildStatus.RESTARTING
    if strategy is Strategy.REST_FOR_ONE:
        first_of_group = ChildStatus.RUNNING
    assert statuses["w0"] is first_of_group
    before_retry = ["w0", "w0"] if strategy is Strategy.ONE_FOR_ALL else ["w0"]
    assert starts_after(events, mark) == before_retry
    manual_timers.fire(-1)
    assert [c.status for c in sup.statistics().children] == [ChildStatus.RUNNING] * 3
    retry = ["w0", "flaky", "w2"] if strategy is Strategy.ONE_FOR_ALL else ["flaky", "w2"]
    assert starts_after(events, mark) == before_retry + retry
