"""The placement decision on constructed tier figures: start, queue, degrade, refuse."""

from __future__ import annotations

import math

from inference._admission import Candidate, Enqueue, Refuse, Start, patience, place


def tier(name: str = "large", **figures: object) -> Candidate:
    fields: dict[str, object] = {"up": True, "degrade_wait": 0.25, "measured": True} | figures
    return Candidate(name=name, **fields)  # type: ignore[arg-type]


def small(**figures: object) -> Candidate:
    return tier("small", **({"free": True, "service_s": 0.1} | figures))


def test_a_free_preferred_tier_starts_the_request_at_once() -> None:
    assert place([tier(free=True), small()], remaining=5.0, start_only=False) == Start(tier=0)


def test_a_preferred_tier_that_is_down_degrades_to_the_smaller_one() -> None:
    down = tier(up=False, fits=False, retry_after=2.0, free=True)
    assert place([down, small()], remaining=5.0, start_only=False) == Start(tier=1)


def test_a_preferred_tier_that_would_miss_the_deadline_degrades() -> None:
    slow = tier(free=True, service_s=3.0)
    assert place([slow, small()], remaining=2.0, start_only=False) == Start(tier=1)


def test_a_full_preferred_tier_degrades_when_its_wait_exceeds_its_patience() -> None:
    busy = tier(service_s=1.0, wait_s=0.5)  # patience: 0.25 * 1.0 s
    assert place([busy, small()], remaining=5.0, start_only=False) == Start(tier=1)


def test_a_full_preferred_tier_within_its_patience_queues_the_request() -> None:
    busy = tier(service_s=1.0, wait_s=0.2)
    decision = place([busy, small()], remaining=5.0, start_only=False)
    assert decision == Enqueue(tier=0, patience=0.25, shed=False)


def test_a_preferred_tier_with_a_full_queue_degrades_unless_it_can_shed() -> None:
    full = tier(service_s=1.0, wait_s=0.1, queue_room=False)
    assert place([full, small()], remaining=5.0, start_only=False) == Start(tier=1)
    shedding = tier(service_s=1.0, wait_s=0.1, queue_room=False, can_shed=True)
    decision = place([shedding, small()], remaining=5.0, start_only=False)
    assert decision == Enqueue(tier=0, patience=0.25, shed=True)


def test_a_request_that_may_not_degrade_waits_as_long_as_its_deadline_allows() -> None:
    busy = tier(service_s=1.0, wait_s=3.0)
    decision = place([busy], remaining=5.0, start_only=False)
    assert decision == Enqueue(tier=0, patience=math.inf, shed=False)


def test_a_smaller_tier_the_request_does_not_fit_is_no_reason_to_stop_waiting() -> None:
    busy = tier(service_s=1.0, wait_s=3.0)
    assert patience([busy, small(fits=False)], 0) == math.inf
    assert place([busy, small(fits=False)], remaining=5.0, start_only=False) == Enqueue(
        tier=0, patience=math.inf, shed=False
    )


def test_when_no_tier_can_answer_in_time_the_soonest_room_is_the_retry_after() -> None:
    down = tier(up=False, fits=False, retry_after=4.0)
    late = small(free=False, service_s=0.5, wait_s=1.2344)
    assert place([down, late], remaining=1.0, start_only=False) == Refuse(retry_after=1.234)


def test_an_open_breaker_bounds_the_retry_after() -> None:
    down = tier(up=False, fits=False, retry_after=0.75)
    full = small(free=False, wait_s=2.0, service_s=0.5, queue_room=False)
    assert place([down, full], remaining=5.0, start_only=False) == Refuse(retry_after=0.75)


def test_nothing_known_of_any_tier_refuses_without_a_retry_after() -> None:
    cold = tier(measured=False, queue_room=False)
    assert place([cold], remaining=5.0, start_only=False) == Refuse(retry_after=None)


def test_start_only_never_queues() -> None:
    busy = tier(service_s=1.0, wait_s=0.1)
    assert place([busy], remaining=5.0, start_only=True) == Refuse(retry_after=1.0)
    assert place([busy, small()], remaining=5.0, start_only=True) == Start(tier=1)
