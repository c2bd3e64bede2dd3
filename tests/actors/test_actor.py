from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from actors import ExitReason
from actors._actor import Actor, running, stop_all
from messages import ExitKind
from tests.conftest import WAIT


class Recorder(Actor):
    """Records what it is told and on which thread; raises what it is told to raise."""

    def __init__(self, name: str = "recorder", *, fail_in: str | None = None) -> None:
        super().__init__(name)
        self.fail_in = fail_in
        self.seen: list[Any] = []
        self.threads: set[threading.Thread] = set()
        self.stopped = False
        self.blocked = threading.Event()
        self.release = threading.Event()

    def on_start(self) -> None:
        self.threads.add(threading.current_thread())
        self.seen.append("started")
        if self.fail_in == "start":
            raise RuntimeError("no start")

    def on_stop(self) -> None:
        self.stopped = True
        STOP_ORDER.append(self.name)
        if self.fail_in == "stop":
            raise RuntimeError("no stop")

    def on_receive(self, message: Any) -> Any:
        self.threads.add(threading.current_thread())
        if isinstance(message, Exception):
            raise message
        if message == "block":
            self.blocked.set()
            self.release.wait(WAIT)
        self.seen.append(message)
        return f"got {message}"


STOP_ORDER: list[str] = []


def started(actor: Recorder) -> Recorder:
    actor.start()
    return actor


def test_on_start_runs_on_the_actors_own_thread_before_the_first_message() -> None:
    actor = started(Recorder())
    assert actor.actor_ref.ask("hello", timeout=WAIT) == "got hello"
    assert actor.seen == ["started", "hello"]
    (thread,) = actor.threads
    assert thread is not threading.current_thread()
    assert thread.name == "recorder"


def test_an_ask_that_raises_answers_its_caller_and_the_actor_carries_on() -> None:
    actor = started(Recorder())
    with pytest.raises(ValueError, match="bad input"):
        actor.actor_ref.ask(ValueError("bad input"), timeout=WAIT)
    assert actor.actor_ref.ask("next", timeout=WAIT) == "got next"
    assert actor.exit_link.reason is None


def test_a_told_message_that_raises_crashes_the_actor_without_calling_on_stop() -> None:
    actor = started(Recorder())
    actor.actor_ref.tell(ValueError("nobody waits"))
    assert actor.exit_link.wait(timeout=WAIT)
    assert actor.exit_link.reason == ExitReason(ExitKind.CRASHED, "ValueError: nobody waits")
    assert not actor.stopped


def test_an_exception_in_on_start_crashes_the_actor_before_it_takes_a_message() -> None:
    actor = started(Recorder(fail_in="start"))
    assert actor.exit_link.wait(timeout=WAIT)
    assert actor.exit_link.reason == ExitReason(ExitKind.CRASHED, "RuntimeError: no start")
    assert actor.seen == ["started"]
    assert not actor.stopped


def test_an_exception_in_on_stop_makes_a_graceful_stop_a_crash() -> None:
    actor = started(Recorder(fail_in="stop"))
    assert actor.actor_ref.stop(timeout=WAIT)
    assert actor.exit_link.reason == ExitReason(ExitKind.CRASHED, "RuntimeError: no stop")


def test_a_stop_serves_what_was_queued_before_it_and_returns_once_the_exit_is_announced() -> None:
    actor = Recorder()
    for i in range(5):
        actor.actor_ref.tell(i)  # queued before the thread even starts
    started(actor)
    assert actor.actor_ref.stop(timeout=WAIT)
    assert actor.seen == ["started", 0, 1, 2, 3, 4]
    assert actor.stopped
    assert actor.exit_link.reason == ExitReason(ExitKind.NORMAL)
    assert actor not in running()


def test_a_stopped_actor_refuses_tells_and_asks_and_a_second_stop_returns_false() -> None:
    actor = started(Recorder())
    assert actor.actor_ref.stop(timeout=WAIT)
    assert not actor.actor_ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        actor.actor_ref.tell("late")
    with pytest.raises(pykka.ActorDeadError):
        actor.actor_ref.ask("late", timeout=WAIT)
    assert not actor.actor_ref.stop(timeout=WAIT)
    assert not actor.request_stop()


def test_an_ask_that_does_not_return_in_time_raises_pykkas_timeout() -> None:
    actor = started(Recorder())
    actor.actor_ref.tell("block")
    assert actor.blocked.wait(WAIT)
    try:
        with pytest.raises(pykka.Timeout):
            actor.actor_ref.ask("waits", timeout=0.01)
    finally:
        actor.release.set()


def test_stop_all_stops_every_running_actor_newest_first() -> None:
    STOP_ORDER.clear()
    actors = [started(Recorder(f"r{i}")) for i in range(3)]
    assert stop_all(timeout=WAIT) == [True, True, True]
    assert STOP_ORDER == ["r2", "r1", "r0"]
    assert all(a.exit_link.exited for a in actors)
    assert running() == []
