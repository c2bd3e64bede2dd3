from __future__ import annotations

import math
import threading
import time

from actors import Timers


def test_calls_run_in_time_order() -> None:
    timers = Timers()
    order: list[int] = []
    done = threading.Event()
    try:
        now = time.monotonic()
        timers.call_at(now + 0.03, lambda: (order.append(3), done.set()))
        timers.call_at(now + 0.01, lambda: order.append(1))
        timers.call_at(now + 0.02, lambda: order.append(2))
        assert done.wait(2)
        assert order == [1, 2, 3]
    finally:
        timers.close()


def test_a_cancelled_call_does_not_run() -> None:
    timers = Timers()
    ran: list[str] = []
    done = threading.Event()
    try:
        timers.call_later(0.01, lambda: ran.append("cancelled")).cancel()
        timers.call_later(0.02, done.set)
        assert done.wait(2)
        assert ran == []
    finally:
        timers.close()


def test_a_failing_callback_does_not_stop_the_timer_thread(caplog: object) -> None:
    timers = Timers()
    done = threading.Event()
    try:
        timers.call_later(0, lambda: 1 / 0)  # type: ignore[func-returns-value]
        timers.call_later(0.01, done.set)
        assert done.wait(2)
    finally:
        timers.close()


def test_close_ends_the_thread() -> None:
    timers = Timers(name="closing-timers")
    timers.close()
    assert all(t.name != "closing-timers" for t in threading.enumerate())


def test_an_endless_delay_does_not_stop_the_timer_thread() -> None:
    timers = Timers(name="test-endless")
    fired = threading.Event()
    try:
        timers.call_later(math.inf, lambda: None)
        timers.call_later(1e300, lambda: None)
        timers.call_later(0.01, fired.set)
        assert fired.wait(2)
    finally:
        timers.close()
