from __future__ import annotations

import time

import pytest

from actors import Runtime
from messages import ChildExited, ChildRestarted, ChildStarted, ConfigError
from supervisors import Backoff, ChildStatus, Strategy, Supervisor, agent_child
from tests.agents import RecordingAgent
from tests.conftest import EventRecorder
from tests.supervisors.helpers import ManualTimers, agent, pool, restarted

ONE_SECOND_THEN_DOUBLE = Backoff(base=1.0, factor=2, cap=10.0, jitter=0, reset_after=60)


def _statuses(sup: Supervisor) -> list[ChildStatus]:
    return [c.status for c in sup.statistics().children]


def _delays(events: EventRecorder, child_id: str) -> list[float]:
    restarts = [e for e in events.events if isinstance(e, ChildRestarted)]
    return [e.delay for e in restarts if e.child_id == child_id]


def test_the_first_restart_is_immediate() -> None:
    assert Backoff().delay(0) == 0.0


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, factor=2, cap=0.5, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_jitter_only_shortens_a_delay_by_at_most_its_share() -> None:
    backoff = Backoff(base=1.0, factor=1, cap=1.0, jitter=0.25)
    delays = [backoff.delay(3) for _ in range(500)]
    assert all(0.75 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize("kwargs", [{"factor": 0.5}, {"jitter": 2.0}, {"base": -1.0}])
def test_invalid_backoff_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


def test_consecutive_restarts_of_one_child_back_off(
    runtime: Runtime, events: EventRecorder
) -> None:
    backoff = Backoff(base=0.01, factor=2, cap=1.0, jitter=0, reset_after=60)
    sup = pool(runtime, n=1, max_restarts=10, period=60, backoff=backoff)
    for i in range(3):
        agent(sup, "w0").kill()
        restarted(events, "w0", count=i + 1)
    delays = [e.delay for e in events.of(ChildRestarted)]
    assert delays == [0.0, 0.01, 0.02]


def test_a_child_waiting_out_its_backoff_shows_as_restarting(
    runtime: Runtime, events: EventRecorder
) -> None:
    backoff = Backoff(base=30, cap=30, jitter=0, reset_after=60)
    sup = pool(runtime, n=1, max_restarts=10, period=60, backoff=backoff)
    agent(sup, "w0").kill()
    restarted(events, "w0")
    agent(sup, "w0").kill()
    events.wait_for(lambda e: type(e).__name__ == "ChildExited", count=2)
    assert [c.status for c in sup.statistics().children] == [ChildStatus.RESTARTING]


def test_the_backoff_resets_after_a_quiet_period(runtime: Runtime, events: EventRecorder) -> None:
    quiet = 0.05
    backoff = Backoff(base=0.01, factor=2, cap=1.0, jitter=0, reset_after=quiet)
    sup = pool(runtime, n=1, max_restarts=10, period=60, backoff=backoff)
    agent(sup, "w0").kill()
    restarted(events, "w0")
    time.sleep(quiet * 2)  # the quiet period is what is under test
    agent(sup, "w0").kill()
    restarted(events, "w0", count=2)
    assert [e.delay for e in events.of(ChildRestarted)] == [0.0, 0.0]


def test_a_child_waiting_out_its_backoff_is_not_restarted_with_a_sibling(
    runtime: Runtime, events: EventRecorder, manual_timers: ManualTimers
) -> None:
    sup = pool(runtime, n=2, max_restarts=10, period=60, backoff=ONE_SECOND_THEN_DOUBLE)
    agent(sup, "w0").kill()
    agent(sup, "w0").kill()  # the first restart was immediate; this one waits 1 s
    agent(sup, "w1").kill()  # w1's first restart: immediate
    assert _statuses(sup) == [ChildStatus.RESTARTING, ChildStatus.RUNNING]
    assert _delays(events, "w0") == [0.0]
    manual_timers.fire(0)
    assert _statuses(sup) == [ChildStatus.RUNNING, ChildStatus.RUNNING]
    assert _delays(events, "w0") == [0.0, 1.0]


def test_rest_for_one_restarts_up_to_a_child_still_waiting_out_its_backoff(
    runtime: Runtime, events: EventRecorder, manual_timers: ManualTimers
) -> None:
    sup = pool(
        runtime,
        n=3,
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=10,
        period=60,
        backoff=ONE_SECOND_THEN_DOUBLE,
    )
    agent(sup, "w1").kill()
    agent(sup, "w1").kill()  # w1 and w2 wait out w1's backoff
    mark = len(events.events)
    agent(sup, "w0").kill()  # w0's first restart: immediate, but w1 still waits
    assert _statuses(sup) == [
        ChildStatus.RUNNING,
        ChildStatus.RESTARTING,
        ChildStatus.RESTARTING,
    ]
    manual_timers.fire(0)
    assert _statuses(sup) == [ChildStatus.RUNNING] * 3
    started = [e.child_id for e in events.events[mark:] if isinstance(e, ChildStarted)]
    assert started == ["w0", "w1", "w2"]
    assert _delays(events, "w1") == [0.0, 1.0]


def test_a_stale_delayed_restart_does_nothing(
    runtime: Runtime, events: EventRecorder, manual_timers: ManualTimers
) -> None:
    sup = pool(runtime, n=1, max_restarts=10, period=60, backoff=ONE_SECOND_THEN_DOUBLE)
    agent(sup, "w0").kill()
    agent(sup, "w0").kill()  # waits 1 s: timer 0
    sup.terminate_child("w0")  # cancels that restart
    sup.restart_child("w0")
    agent(sup, "w0").kill()  # waits 2 s: a later timer
    assert _statuses(sup) == [ChildStatus.RESTARTING]
    starts = len(events.of(ChildStarted))
    manual_timers.fire(0)
    assert _statuses(sup) == [ChildStatus.RESTARTING]
    assert len(events.of(ChildStarted)) == starts
    manual_timers.fire(-1)
    assert _statuses(sup) == [ChildStatus.RUNNING]
    assert _delays(events, "w0") == [0.0, 2.0]
    manual_timers.fire(-1)  # the same timer again, after its restart has run
    assert len(events.of(ChildStarted)) == starts + 1
    assert len(events.of(ChildExited)) == 3


def test_terminating_a_waiting_child_lets_the_children_after_it_restart(
    runtime: Runtime, events: EventRecorder, manual_timers: ManualTimers
) -> None:
    sup = pool(
        runtime,
        n=1,
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=10,
        period=60,
        backoff=ONE_SECOND_THEN_DOUBLE,
    )
    agent(sup, "w0").kill()
    agent(sup, "w0").kill()  # w0 waits 1 s
    sup.start_child(agent_child(RecordingAgent, runtime, id="late"))
    agent(sup, "late").kill()  # due at once, but started after w0, so it waits for w0
    assert _statuses(sup) == [ChildStatus.RESTARTING, ChildStatus.RESTARTING]
    sup.terminate_child("w0")
    assert _statuses(sup) == [ChildStatus.STOPPED, ChildStatus.RUNNING]
    assert _delays(events, "late") == [0.0]
