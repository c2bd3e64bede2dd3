"""Restart strategies, as the Erlang/OTP supervisor documentation describes them."""

from __future__ import annotations

from actors import Runtime
from messages import ChildExited, ExitKind
from supervisors import Strategy
from tests.agents import STOPPED, Echo
from tests.conftest import EventRecorder
from tests.supervisors.helpers import agent, pool, restarted, starts_after


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
