"""Wake-ups: a busy consumer is never woken, a loop thread wakes once per burst, and
what an actor holds back goes out before it runs or waits again."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors import Agent, Call, Context, Reply, Runtime, handler, hold_wake_ups
from actors._mailbox import Envelope, Mailbox
from actors._wakeups import release, wake
from messages import Message, Metadata, Priority, RequestTimeout

WAIT = 5.0
# How long a consumer that must not be woken is watched (it cannot wake without a token).
QUIET = 0.2


class Job(Message, frozen=True, kw_only=True):
    name: str


class Done(Message, frozen=True, kw_only=True):
    name: str


class Step(Message, frozen=True, kw_only=True):
    name: str


GATES: dict[str, threading.Event] = {}


class GatedAgent(Agent):
    """Answers a Job at once; emits a Step, then waits for its gate, before answering it."""

    agent_type = "gated-wakeups"
    chunk_type = Step

    @handler
    def job(self, msg: Job, ctx: Context) -> Done:
        if msg.name in GATES:
            ctx.emit(Step(name=msg.name))
            GATES[msg.name].wait(WAIT)
        return Done(name=msg.name)


def meta(name: str) -> Metadata:
    return Metadata(id=name, deadline=math.inf, priority=Priority.DEFAULT)


def call(name: str) -> Call:
    return Call(name, meta(name), Reply())


@pytest.fixture
def held() -> Iterator[list[Callable[[], None]]]:
    """This thread holds its wake-ups as an event loop would; the scheduled releases."""
    scheduled: list[Callable[[], None]] = []
    hold_wake_ups(scheduled.append)
    yield scheduled
    release()
    hold_wake_ups(None)


def consume(box: Mailbox) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(box.get()))
    consumer.start()
    return consumer, got


def wait_until_sleeping(box: Mailbox) -> None:
    pause = threading.Event()
    for _ in range(500):
        if box._sleeping:  # the consumer's own flag
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
    consumer, got = consume(box)
    wait_until_sleeping(box)
    first, second = call("first"), call("second")
    box.queue(first, 1)
    box.queue(second, 1)
    consumer.join(WAIT)
    assert got == [first]
    assert box._wake.qsize() == 0  # the second put found it awake
    assert box.get() is second


def test_a_loop_thread_wakes_its_consumers_only_when_its_burst_is_done(
    held: list[Callable[[], None]],
) -> None:
    boxes = [Mailbox(), Mailbox()]
    consumers = [consume(box) for box in boxes]
    for box in boxes:
        wait_until_sleeping(box)
    for i, box in enumerate(boxes):
        box.queue(call(str(i)), 1)
        box.queue(call(f"{i}+"), 1)
    assert len(held) == 1, "one release is scheduled for the whole burst"
    for thread, _ in consumers:
        thread.join(QUIET)
        assert thread.is_alive(), "woken before the burst was done"
    held.pop()()
    for i, (thread, got) in enumerate(consumers):
        thread.join(WAIT)
        assert not thread.is_alive()
        assert [c.payload for c in got] == [str(i)]  # type: ignore[attr-defined]


def test_a_control_envelope_is_never_held(held: list[Callable[[], None]]) -> None:
    box = Mailbox()
    consumer, got = consume(box)
    wait_until_sleeping(box)
    stop = Envelope("stop")
    box.queue(stop, 3)
    consumer.join(WAIT)
    assert got == [stop]
    assert held == []


def test_a_thread_that_blocks_on_a_reply_gives_what_it_holds_first(
    held: list[Callable[[], None]],
) -> None:
    woken: list[object] = []
    wake(woken.append, "agent")
    assert woken == []
    with pytest.raises(RequestTimeout):
        Reply[Any]().get(timeout=0.01)
    assert woken == ["agent"]


def test_a_thread_that_holds_nothing_wakes_at_once() -> None:
    woken: list[object] = []
    wake(woken.append, "now")
    assert woken == ["now"]


def test_an_agent_holds_its_reply_wake_up_only_until_it_runs_or_sleeps(
    runtime: Runtime,
) -> None:
    GATES.clear()
    GATES["second"] = threading.Event()
    GatedAgent.spawn(runtime)
    ref = runtime.ref(GatedAgent.agent_type)
    woken: dict[str, threading.Event] = {name: threading.Event() for name in ("first", "step")}

    def to_the_loop(name: str) -> Callable[[Reply[Any]], None]:
        # What the bridges do: a reply's callback wakes the I/O loop through `wake`.
        return lambda _reply: wake(lambda n: woken[n].set(), name)

    first = Call(Job(name="first"), meta("first"), Reply())
    second = Call(Job(name="second"), meta("second"), Reply())
    assert first.reply is not None
    assert second.reply is not None
    first.reply.add_done_callback(to_the_loop("first"))
    second.reply.on_chunk = lambda _chunk: wake(lambda n: woken[n].set(), "step")
    assert ref.deliver_local(first)
    assert ref.deliver_local(second)
    try:
        # The second handler is blocked on its gate: by now the first reply's
        # wake-up went out (before that handler ran), and so did its chunk.
        assert woken["first"].wait(WAIT)
        assert woken["step"].wait(WAIT)
        assert not second.reply.done()
    finally:
        GATES["second"].set()
    assert second.reply.get(timeout=WAIT) == Done(name="second")


def test_a_handler_called_outside_an_actor_thread_holds_nothing(runtime: Runtime) -> None:
    # A test or a bench may run an agent's turn on its own thread: nothing it
    # causes afterwards may be held for an actor loop that will never release it.
    agent = GatedAgent(runtime)
    reply: Reply[Any] = Reply()
    woken: list[object] = []
    reply.add_done_callback(lambda _reply: wake(woken.append, "loop"))
    agent._on_call(Call(Job(name="direct"), meta("direct"), reply))
    assert reply.get(timeout=WAIT) == Done(name="direct")
    assert woken == ["loop"]
    wake(woken.append, "later")
    assert woken == ["loop", "later"]
