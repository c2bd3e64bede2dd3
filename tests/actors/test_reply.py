from __future__ import annotations

import threading
import time

import pytest

from actors import Reply
from messages import RequestTimeout, Unavailable


def test_the_first_settlement_wins() -> None:
    reply: Reply[int] = Reply()
    assert reply.set(1)
    assert not reply.fail(Unavailable("late"))
    assert not reply.set(2)
    assert reply.get(timeout=0) == 1


def test_an_error_settlement_is_raised_by_get() -> None:
    reply: Reply[int] = Reply()
    reply.fail(Unavailable("gone"))
    with pytest.raises(Unavailable, match="gone"):
        reply.get(timeout=0)


def test_get_times_out_with_a_typed_error() -> None:
    with pytest.raises(RequestTimeout):
        Reply[int]().get(timeout=0.001)


def test_get_gives_up_at_the_replys_deadline() -> None:
    reply: Reply[int] = Reply(deadline=time.time() - 1)
    with pytest.raises(RequestTimeout):
        reply.get()


def test_a_waiter_on_another_thread_wakes_when_settled() -> None:
    reply: Reply[str] = Reply()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(reply.get(timeout=5)))
    waiter.start()
    reply.set("done")
    waiter.join(5)
    assert got == ["done"]


def test_callbacks_run_once_whether_added_before_or_after_settling() -> None:
    reply: Reply[int] = Reply()
    seen: list[object] = []
    reply.add_done_callback(lambda r: seen.append(r.result()))
    reply.set(5)
    reply.add_done_callback(lambda r: seen.append(r.result()))
    assert seen == [5, 5]
