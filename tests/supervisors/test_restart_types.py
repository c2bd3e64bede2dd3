"""Restart types: permanent, transient, temporary (OTP semantics)."""

from __future__ import annotations

import pytest

from actors import Runtime
from messages import ChildExited, ExitKind, InternalError
from supervisors import ChildStatus, Restart, Strategy
from tests.agents import Crash
from tests.conftest import EventRecorder
from tests.supervisors.helpers import agent, pool, restarted


def _exited(events: EventRecorder, child_id: str) -> ChildExited:
    (event,) = events.wait_for(lambda e: isinstance(e, ChildExited) and e.child_id == child_id)
    assert isinstance(event, ChildExited)
    return event


def _status(sup: object, child_id: str) -> list[ChildStatus]:
    stats = sup.statistics()  # type: ignore[attr-defined]
    return [c.status for c in stats.children if c.id == child_id]


def test_a_permanent_child_is_restarted_even_after_a_normal_exit(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=1)
    agent(sup, "w0")._agent.request_stop()
    assert _exited(events, "w0").reason is ExitKind.NORMAL
    restarted(events, "w0")


def test_a_transient_child_that_exits_normally_is_not_restarted_but_kept(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, restarts=[Restart.TRANSIENT])
    agent(sup, "w0")._agent.request_stop()
    assert _exited(events, "w0").reason is ExitKind.NORMAL
    assert _status(sup, "w0") == [ChildStatus.STOPPED]
    assert "w0" not in sup.which_children()


def test_a_transient_child_that_crashes_is_restarted(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, restarts=[Restart.TRANSIENT])
    with pytest.raises(InternalError):
        agent(sup, "w0").ask(Crash())
    assert _exited(events, "w0").reason is ExitKind.CRASHED
    restarted(events, "w0")
    assert _status(sup, "w0") == [ChildStatus.RUNNING]


def test_a_temporary_child_is_never_restarted_and_is_removed(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, restarts=[Restart.TEMPORARY, Restart.PERMANENT])
    agent(sup, "w0").kill()
    _exited(events, "w0")
    assert _status(sup, "w0") == []
    assert list(sup.which_children()) == ["w1"]


def test_a_temporary_sibling_stopped_by_one_for_all_is_not_restarted(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(
        runtime,
        strategy=Strategy.ONE_FOR_ALL,
        restarts=[Restart.TEMPORARY, Restart.PERMANENT, Restart.TRANSIENT],
    )
    agent(sup, "w1").kill()
    restarted(events, "w2")
    assert list(sup.which_children()) == ["w1", "w2"]


def test_a_transient_sibling_is_restarted_with_its_group(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(
        runtime, strategy=Strategy.ONE_FOR_ALL, restarts=[Restart.PERMANENT, Restart.TRANSIENT]
    )
    before = sup.which_children()
    agent(sup, "w0").kill()
    restarted(events, "w1")
    assert sup.which_children()["w1"] is not before["w1"]
