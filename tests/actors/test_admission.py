"""Admission to agents: a bounded queue per type, deadline-aware refusal, priorities."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from actors import AgentRef, Call, Reply, Runtime
from actors._admission import UNMEASURED_RETRY_AFTER, Admission
from messages import Metadata, Overloaded, Priority, RequestTimeout
from tests.actors.gated import held, refusal
from tests.agents import HANDLED, Echo, WorkerAgent
from tests.conftest import WAIT


def ask(ref: AgentRef, text: str, priority: Priority = Priority.DEFAULT) -> Reply[Any]:
    return ref.ask_async(Echo(text=text), priority=priority)


def texts(replies: list[Reply[Any]]) -> list[str]:
    return [r.get(timeout=WAIT).text for r in replies]


def test_a_full_queue_refuses_a_request_at_once_with_overloaded_and_retry_after(
    runtime: Runtime,
) -> None:
    runtime.admission("worker").configure(max_queue=2)
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    with held(worker, "full"):
        queued = [ask(worker, "0"), ask(worker, "1")]
        error = refusal(ask(worker, "one too many"))
        assert error.retry_after == UNMEASURED_RETRY_AFTER
        assert not any(r.done() for r in queued)
    assert texts(queued) == ["0", "1"]
    [stats] = runtime.admission_statistics()
    assert (stats.agent_type, stats.max_queue, stats.refused_full) == ("worker", 2, 1)


def test_a_request_that_could_not_finish_before_its_deadline_is_refused_at_once(
    runtime: Runtime,
) -> None:
    runtime.admission("worker").configure(max_queue=8, service_time=1.0)
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    with held(worker, "late"):
        error = refusal(worker.ask_async(Echo(text="late"), timeout=0.05))
        assert "deadline" in error.message
        assert error.retry_after is not None
        assert error.retry_after > 0.5  # the gated handler is expected to run ~1 s
        in_time = worker.ask_async(Echo(text="in time"), timeout=WAIT)
        assert not in_time.done()
    assert in_time.get(timeout=WAIT).text == "in time"
    [stats] = runtime.admission_statistics()
    assert stats.refused_late == 1


def test_a_request_to_an_idle_agent_is_let_in_whatever_the_estimate(runtime: Runtime) -> None:
    runtime.admission("worker").configure(max_queue=8, service_time=60.0)
    WorkerAgent.spawn(runtime)
    assert runtime.ref("worker").ask(Echo(text="now"), timeout=WAIT).text == "now"


def test_the_service_time_is_an_ewma_of_handler_durations_replacing_the_assumption(
    runtime: Runtime,
) -> None:
    admission = Admission("x", timers=runtime.timers, service_time=3.0)
    assert admission.service_s == 3.0
    admission.learn(1.0)
    assert admission.service_s == 1.0
    admission.learn(2.0)
    assert admission.service_s == pytest.approx(1.2)
    admission.configure(max_queue=4, service_time=9.0)
    assert admission.service_s == pytest.approx(1.2)


def test_agents_time_their_handlers_into_the_estimate(runtime: Runtime) -> None:
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    worker.ask(Echo(text="first"))
    worker.ask(Echo(text="second"))  # taken after the first one was timed
    [stats] = runtime.admission_statistics()
    assert stats.service_ms is not None
    assert stats.service_ms > 0


def test_queued_requests_are_served_critical_first_then_default_then_sheddable(
    runtime: Runtime,
) -> None:
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    HANDLED.clear()
    order = ["sheddable", "default", "critical", "default", "critical"]
    with held(worker, "order"):
        replies = [ask(worker, f"{p}-{i}", Priority(p)) for i, p in enumerate(order)]
    texts(replies)
    assert HANDLED == ["critical-2", "critical-4", "default-1", "default-3", "sheddable-0"]


def test_a_full_queue_makes_room_by_answering_its_newest_less_important_request_overloaded(
    runtime: Runtime,
) -> None:
    runtime.admission("worker").configure(max_queue=4)
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    with held(worker, "room"):
        s1, s2 = ask(worker, "s1", Priority.SHEDDABLE), ask(worker, "s2", Priority.SHEDDABLE)
        d1, d2 = ask(worker, "d1"), ask(worker, "d2")
        c1 = ask(worker, "c1", Priority.CRITICAL)
        assert refusal(s2).retry_after == UNMEASURED_RETRY_AFTER
        assert not s1.done()
        d3 = ask(worker, "d3")
        assert refusal(s1).retry_after is not None
        c2 = ask(worker, "c2", Priority.CRITICAL)
        refusal(d3)
        assert not any(r.done() for r in (d1, d2, c1, c2))
    assert texts([c1, c2, d1, d2]) == ["c1", "c2", "d1", "d2"]
    [stats] = runtime.admission_statistics()
    assert (stats.displaced, stats.refused_full) == (3, 0)


def test_a_full_queue_of_requests_as_important_refuses_the_newcomer(runtime: Runtime) -> None:
    runtime.admission("worker").configure(max_queue=2)
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    with held(worker, "equal"):
        queued = [ask(worker, "c1", Priority.CRITICAL), ask(worker, "d1")]
        refusal(ask(worker, "d2"))
        queued.append(ask(worker, "c2", Priority.CRITICAL))  # displaces d1
        refusal(ask(worker, "c3", Priority.CRITICAL))
        assert refusal(queued[1]).retry_after is not None
    assert texts([queued[0], queued[2]]) == ["c1", "c2"]


def test_sheddable_requests_may_fill_only_half_of_the_queue(runtime: Runtime) -> None:
    runtime.admission("worker").configure(max_queue=4)
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    with held(worker, "half"):
        queued = [ask(worker, "s1", Priority.SHEDDABLE), ask(worker, "s2", Priority.SHEDDABLE)]
        refusal(ask(worker, "s3", Priority.SHEDDABLE))
        queued.append(ask(worker, "d1"))
        assert not any(r.done() for r in queued)
    assert texts(queued) == ["s1", "s2", "d1"]


def test_a_tell_the_agents_cannot_take_raises_overloaded(runtime: Runtime) -> None:
    runtime.admission("worker").configure(max_queue=1)
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    HANDLED.clear()
    with held(worker, "tell"):
        worker.tell(Echo(text="queued"))
        with pytest.raises(Overloaded):
            worker.tell(Echo(text="refused"))
    worker.ask(Echo(text="after"))
    assert HANDLED == ["queued", "after"]


def test_a_reference_to_one_agent_is_admitted_against_that_agents_queue(
    runtime: Runtime,
) -> None:
    runtime.admission("worker").configure(max_queue=1)
    ref = WorkerAgent.spawn(runtime)
    with held(ref, "direct"):
        queued = ask(ref, "queued")
        refusal(ask(ref, "refused"))
    assert queued.get(timeout=WAIT).text == "queued"


def test_a_request_goes_to_the_member_with_the_fewest_requests_ahead_of_it(
    runtime: Runtime,
) -> None:
    busy = WorkerAgent.spawn(runtime, instance="a")
    WorkerAgent.spawn(runtime, instance="b")
    worker = runtime.ref("worker")
    with held(busy, "fewest"):
        answered_by = [worker.ask(Echo(text=str(i))).by for i in range(3)]
    assert answered_by == ["worker/b"] * 3


def test_the_bound_counts_the_queues_of_every_member_of_the_type(runtime: Runtime) -> None:
    runtime.admission("worker").configure(max_queue=2)
    a = WorkerAgent.spawn(runtime, instance="a")
    b = WorkerAgent.spawn(runtime, instance="b")
    worker = runtime.ref("worker")
    with held(a, "bound-a"), held(b, "bound-b"):
        queued = [ask(worker, "0"), ask(worker, "1")]
        refusal(ask(worker, "2"))
    assert sorted(texts(queued)) == ["0", "1"]


def test_a_request_still_queued_when_it_could_no_longer_finish_is_answered_timeout(
    runtime: Runtime,
) -> None:
    WorkerAgent.spawn(runtime)
    worker = runtime.ref("worker")
    settled = threading.Event()
    with held(worker, "expiry"):
        queued = worker.ask_async(Echo(text="expires"), timeout=0.05)
        queued.add_done_callback(lambda _reply: settled.set())
        assert settled.wait(WAIT)  # set by the timer thread, not by the agent
        outcome = queued.result()
        assert isinstance(outcome, RequestTimeout)
        assert "could no longer finish in time" in outcome.message


def test_the_deadline_timer_of_a_request_an_agent_has_taken_does_nothing(runtime: Runtime) -> None:
    admission = Admission("worker", timers=runtime.timers)
    reply: Reply[Any] = Reply()
    running = Call(Echo(text="running"), Metadata(id="r1", deadline=math.inf), reply)
    running.taken = True  # the agent started it: it answers by its own deadline
    admission._expire(running)
    assert not reply.done()
    waiting = Call(Echo(text="waiting"), Metadata(id="r2", deadline=math.inf), Reply())
    admission._expire(waiting)
    assert waiting.reply is not None
    with pytest.raises(RequestTimeout):
        waiting.reply.get(timeout=WAIT)
