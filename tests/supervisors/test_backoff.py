from __future__ import annotations

import time

import pytest

from actors import Runtime
from messages import ChildRestarted, ConfigError
from supervisors import Backoff, ChildStatus
from tests.conftest import EventRecorder
from tests.supervisors.helpers import agent, pool, restarted


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
