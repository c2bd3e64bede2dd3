from __future__ import annotations

import math
import threading

import pykka
import pytest

from actors import Call, Reply
from actors._mailbox import WAKE_UP, Envelope, Mailbox
from messages import Metadata, Priority


def call(name: str, priority: Priority = Priority.DEFAULT, *, reply: bool = True) -> Call:
    meta = Metadata(id=name, deadline=math.inf, priority=priority)
    return Call(name, meta, Reply() if reply else None)


def test_close_returns_what_was_queued_in_order_and_refuses_more() -> None:
    box = Mailbox()
    for i in range(3):
        assert box.offer(Envelope(i))
    assert [e.message for e in box.close()] == [0, 1, 2]  # type: ignore[union-attr]
    assert not box.offer(Envelope(3))
    assert box.closed


def test_a_put_after_close_is_handed_to_reject() -> None:
    box = Mailbox()
    rejected: list[object] = []
    box.reject = rejected.append
    box.close()
    late = Envelope("late")
    box.put(late)
    assert rejected == [late]


def test_without_a_reject_handler_a_late_put_raises_actor_dead() -> None:
    box = Mailbox()
    box.close()
    with pytest.raises(pykka.ActorDeadError):
        box.put(Envelope("late"))


def test_close_wakes_a_consumer_blocked_in_get() -> None:
    box = Mailbox()
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(box.get()))
    consumer.start()
    box.close()
    consumer.join(5)
    assert got == [WAKE_UP]


def test_every_racing_put_is_either_drained_or_rejected() -> None:
    box = Mailbox()
    rejected: list[object] = []
    box.reject = rejected.append
    sent = 2000
    start = threading.Event()

    def producer(base: int) -> None:
        start.wait(5)
        for i in range(sent // 2):
            box.put(Envelope(base + i))

    producers = [threading.Thread(target=producer, args=(n * sent,)) for n in range(2)]
    for thread in producers:
        thread.start()
    start.set()
    drained = box.close()
    for thread in producers:
        thread.join(5)
    assert len(drained) + len(rejected) == sent


def test_calls_are_taken_most_important_first_and_in_order_within_a_priority() -> None:
    box = Mailbox()
    sent = [
        call("s1", Priority.SHEDDABLE),
        call("d1"),
        call("c1", Priority.CRITICAL),
        call("d2"),
        call("c2", Priority.CRITICAL),
    ]
    for item in sent:
        assert box.offer(item)
    assert [box.get().payload for _ in sent] == ["c1", "c2", "d1", "d2", "s1"]  # type: ignore[union-attr]


def test_envelopes_come_after_the_calls_queued_before_them_so_a_stop_finishes_them() -> None:
    box = Mailbox()
    box.offer(call("s0", Priority.SHEDDABLE))
    stop = Envelope("stop")
    box.offer(stop)
    box.offer(call("s1", Priority.SHEDDABLE))
    assert box.get().payload == "s0"  # type: ignore[union-attr]
    assert box.get() is stop
    assert box.get().payload == "s1"  # type: ignore[union-attr]


def test_ahead_counts_the_calls_a_request_of_each_priority_waits_behind() -> None:
    box = Mailbox()
    for item in (call("c", Priority.CRITICAL), call("d"), call("s", Priority.SHEDDABLE)):
        box.offer(item)
    box.offer(Envelope("stop"))
    assert [box.ahead(rank) for rank in range(3)] == [1, 2, 3]
    assert len(box) == 4


def test_displace_takes_the_newest_less_important_call_that_awaits_a_reply() -> None:
    box = Mailbox()
    s1, s2, d1 = call("s1", Priority.SHEDDABLE), call("s2", Priority.SHEDDABLE), call("d1")
    for item in (s1, s2, d1):
        box.offer(item)
    assert box.displace(0) is s2
    assert box.displace(1) is s1
    assert box.displace(1) is None  # nothing less important than default is left
    assert box.displace(0) is d1
    box.offer(call("t", Priority.SHEDDABLE, reply=False))
    assert box.displace(0) is None  # a tell has no caller to answer: it stays


def test_a_consumer_skips_the_token_a_displaced_call_left_behind() -> None:
    box = Mailbox()
    box.offer(call("shed", Priority.SHEDDABLE))
    assert box.displace(0) is not None
    box.offer(call("next"))
    assert box.get().payload == "next"  # type: ignore[union-attr]
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(box.get()))
    consumer.start()  # takes the stale token, finds nothing and waits again
    box.offer(call("later"))
    consumer.join(5)
    assert [g.payload for g in got] == ["later"]  # type: ignore[attr-defined]


def test_a_stop_comes_after_the_calls_queued_before_it_not_after_those_that_keep_coming() -> None:
    box = Mailbox()
    box.offer(call("a"))
    box.offer(call("b", Priority.SHEDDABLE))
    stop = Envelope("stop")
    box.offer(stop)
    for i in range(5):
        box.offer(call(f"late-{i}", Priority.CRITICAL))
    # Two requests were ahead of the stop: two are served (critical first), then the stop.
    first, second = box.get(), box.get()
    assert [first.payload, second.payload] == ["late-0", "late-1"]  # type: ignore[union-attr]
    assert box.get() is stop
    rest = [box.get().payload for _ in range(5)]  # type: ignore[union-attr]
    assert rest == ["late-2", "late-3", "late-4", "a", "b"]


def _wait_until_sleeping(box: Mailbox) -> None:
    pause = threading.Event()
    for _ in range(500):
        if box._sleeping:  # the consumer's own flag, set under the lock before it blocks
            return
        pause.wait(0.01)
    pytest.fail("the consumer never went to sleep")


def test_a_consumer_that_is_not_asleep_is_not_woken() -> None:
    box = Mailbox()
    for i in range(3):
        assert box.queue(call(str(i)), 1)
    assert box._wake.qsize() == 0  # no token: nobody sleeps
    assert [box.get().payload for _ in range(3)] == ["0", "1", "2"]  # type: ignore[union-attr]


def test_a_put_wakes_a_sleeping_consumer_once() -> None:
    box = Mailbox()
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(box.get()))
    consumer.start()
    _wait_until_sleeping(box)
    first, second = call("first"), call("second")
    box.queue(first, 1)
    box.queue(second, 1)
    consumer.join(5)
    assert got == [first]
    assert box._wake.qsize() == 0  # the second put found it awake
    assert box.get() is second
