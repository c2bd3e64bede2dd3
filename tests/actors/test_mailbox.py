from __future__ import annotations

import threading

import pykka
import pytest
from pykka._envelope import Envelope

from actors._mailbox import WAKE_UP, Mailbox


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
