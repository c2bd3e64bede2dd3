from __future__ import annotations

import threading
import time

import pytest

from actors import Agent, AgentDefaults, Context, ExitReason, Runtime, handler
from messages import (
    AgentDefinitionError,
    AgentStopped,
    BadRequest,
    ExitKind,
    InternalError,
    Message,
    Metadata,
    NotFound,
    Ping,
    Pong,
    Priority,
    RequestTimeout,
    Unavailable,
)
from tests.agents import (
    HANDLED,
    Block,
    Budget,
    Crash,
    Echo,
    Echoed,
    Forward,
    OtherAgent,
    Refuse,
    WorkerAgent,
    gate,
)


class A(Message, frozen=True, kw_only=True):
    pass


class B(Message, frozen=True, kw_only=True):
    pass


def test_handlers_are_registered_by_the_annotation_of_their_message() -> None:
    assert WorkerAgent.handlers[Echo] is WorkerAgent.echo
    assert WorkerAgent.agent_type == "worker"


def test_a_union_annotation_registers_each_member() -> None:
    class UnionAgent(Agent):
        @handler
        def both(self, msg: A | B, ctx: Context) -> None:
            return None

    assert set(UnionAgent.handlers) == {A, B}


def test_subclasses_inherit_handlers_and_get_their_own_type_name() -> None:
    assert OtherAgent.handlers[Echo] is WorkerAgent.echo
    assert OtherAgent.agent_type == "other"


def test_a_handler_without_a_message_annotation_is_a_definition_error() -> None:
    with pytest.raises(AgentDefinitionError, match="annotate"):

        class Bad(Agent):
            @handler
            def untyped(self, msg, ctx: Context) -> None:  # type: ignore[no-untyped-def]
                return None


def test_a_handler_with_the_wrong_arity_is_a_definition_error() -> None:
    with pytest.raises(AgentDefinitionError, match="self, msg, ctx"):

        class Bad(Agent):
            @handler
            def two(self, msg: A) -> None:
                return None


def test_an_ask_returns_the_handlers_reply(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime, instance="a")
    assert ref.ask(Echo(text="hi")) == Echoed(text="hi", by="worker/a")


def test_an_unknown_message_type_gets_bad_request_and_the_agent_keeps_serving(
    runtime: Runtime,
) -> None:
    ref = WorkerAgent.spawn(runtime)
    with pytest.raises(BadRequest, match="does not handle A"):
        ref.ask(A())
    assert ref.ask(Ping(payload="still here")) == Pong(payload="still here", responder=ref.name)


def test_a_typed_error_from_a_handler_reaches_the_caller_and_the_agent_lives(
    runtime: Runtime,
) -> None:
    ref = WorkerAgent.spawn(runtime)
    with pytest.raises(NotFound, match="no such thing"):
        ref.ask(Refuse())
    assert ref.alive
    assert ref.ask(Echo(text="x")).text == "x"


def test_a_crashing_handler_fails_its_caller_with_internal_error_and_kills_the_agent(
    runtime: Runtime,
) -> None:
    ref = WorkerAgent.spawn(runtime)
    exits: list[ExitReason] = []
    ref.link(exits.append)
    with pytest.raises(InternalError):
        ref.ask(Crash(reason="boom"))
    assert not ref.alive
    assert exits == [ExitReason(ExitKind.CRASHED, "RuntimeError")]  # not its message
    with pytest.raises(AgentStopped):
        ref.ask(Echo(text="after"))


class FailingStartAgent(WorkerAgent):
    def on_start(self) -> None:
        raise RuntimeError("no connection")


def test_an_agent_whose_on_start_raises_exits_crashed_and_fails_its_queued_asks(
    runtime: Runtime,
) -> None:
    agent = FailingStartAgent(runtime)
    runtime.directory.register(agent)
    queued = agent.ref.ask_async(Echo(text="before start"))
    exits: list[ExitReason] = []
    agent.ref.link(exits.append)
    agent.start()
    assert agent.exit_link.wait(timeout=5)
    assert exits == [ExitReason(ExitKind.CRASHED, "RuntimeError: no connection")]
    with pytest.raises(AgentStopped, match="crashed"):
        queued.get(timeout=0)
    assert runtime.directory.members(agent.agent_type) == ()


class FailingStopAgent(WorkerAgent):
    def on_stop(self) -> None:
        raise RuntimeError("could not drain")


def test_an_agent_whose_on_stop_raises_exits_crashed_after_serving_its_queue(
    runtime: Runtime,
) -> None:
    ref = FailingStopAgent.spawn(runtime)
    replies = [ref.ask_async(Echo(text=str(i))) for i in range(3)]
    exits: list[ExitReason] = []
    ref.link(exits.append)
    ref.shutdown(timeout=5)
    assert [r.get(timeout=0).text for r in replies] == ["0", "1", "2"]
    assert exits == [ExitReason(ExitKind.CRASHED, "RuntimeError: could not drain")]


def test_an_ask_whose_deadline_passed_in_the_queue_is_not_handled(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    entered, release = gate("deadline")
    blocked = ref.ask_async(Block(gate="deadline"))
    assert entered.wait(5)
    late = ref.ask_async(Echo(text="too-late"), timeout=0.001)
    with pytest.raises(RequestTimeout):
        late.get()
    release.set()
    assert blocked.get() == "deadline"
    assert ref.ask(Echo(text="fresh")).text == "fresh"
    assert "too-late" not in HANDLED


def test_an_ask_with_a_deadline_already_past_fails_without_waiting(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    start = time.monotonic()
    with pytest.raises(RequestTimeout):
        ref.ask(Echo(text="past"), deadline=time.time() - 1)
    assert time.monotonic() - start < 1


def test_kill_fails_queued_and_in_flight_asks_at_once(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    entered, release = gate("kill")
    in_flight = ref.ask_async(Block(gate="kill"))
    assert entered.wait(5)
    queued = [ref.ask_async(Echo(text=f"q{i}")) for i in range(5)]
    exits: list[ExitReason] = []
    ref.link(exits.append)

    ref.kill()

    for reply in [in_flight, *queued]:
        assert reply.done()
        with pytest.raises(AgentStopped, match="killed"):
            reply.get(timeout=0)
    assert exits == [ExitReason(ExitKind.KILLED)]
    release.set()


def test_a_killed_agents_thread_ends_once_its_handler_returns(runtime: Runtime) -> None:
    before = {t.ident for t in threading.enumerate()}
    ref = WorkerAgent.spawn(runtime)
    entered, release = gate("thread")
    ref.ask_async(Block(gate="thread"))
    assert entered.wait(5)
    agent_threads = [t for t in threading.enumerate() if t.ident not in before]
    assert len(agent_threads) == 1
    ref.kill()
    assert agent_threads[0].is_alive()
    release.set()
    agent_threads[0].join(5)
    assert not agent_threads[0].is_alive()


def test_killing_an_idle_agent_ends_its_thread(runtime: Runtime) -> None:
    before = {t.ident for t in threading.enumerate()}
    ref = WorkerAgent.spawn(runtime)
    ref.ask(Ping())
    (thread,) = [t for t in threading.enumerate() if t.ident not in before]
    ref.kill()
    thread.join(5)
    assert not thread.is_alive()


def test_kill_is_idempotent_and_reports_one_exit(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    exits: list[ExitReason] = []
    ref.link(exits.append)
    ref.kill()
    ref.kill()
    assert exits == [ExitReason(ExitKind.KILLED)]


def test_linking_to_a_dead_agent_reports_its_exit_at_once(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    ref.kill()
    exits: list[ExitReason] = []
    ref.link(exits.append)
    assert exits == [ExitReason(ExitKind.KILLED)]


def test_a_graceful_shutdown_finishes_queued_work_then_exits_normally(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    replies = [ref.ask_async(Echo(text=str(i))) for i in range(10)]
    exits: list[ExitReason] = []
    ref.link(exits.append)
    ref.shutdown(timeout=5)
    assert [r.get(timeout=0).text for r in replies] == [str(i) for i in range(10)]
    assert exits == [ExitReason(ExitKind.NORMAL)]


def test_a_shutdown_that_overruns_its_timeout_kills_the_agent(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    entered, release = gate("slow-stop")
    ref.ask_async(Block(gate="slow-stop"))
    assert entered.wait(5)
    exits: list[ExitReason] = []
    ref.link(exits.append)
    ref.shutdown(timeout=0.01)
    assert exits == [ExitReason(ExitKind.KILLED)]
    release.set()


def test_a_tell_to_a_dead_agent_raises_unavailable(runtime: Runtime) -> None:
    ref = WorkerAgent.spawn(runtime)
    ref.kill()
    with pytest.raises(Unavailable):
        ref.tell(Echo(text="x"))


def test_a_type_ref_spreads_asks_over_live_members(runtime: Runtime) -> None:
    refs = [WorkerAgent.spawn(runtime, instance=str(i)) for i in range(3)]
    by = {runtime.ref("worker").ask(Echo(text="x")).by for _ in range(6)}
    assert by == {r.name for r in refs}


def test_a_type_ref_skips_dead_members(runtime: Runtime) -> None:
    dead = WorkerAgent.spawn(runtime, instance="dead")
    live = WorkerAgent.spawn(runtime, instance="live")
    dead.kill()
    assert {runtime.ref("worker").ask(Echo(text="x")).by for _ in range(4)} == {live.name}


def test_a_type_with_no_live_member_is_unavailable_at_once(runtime: Runtime) -> None:
    with pytest.raises(Unavailable, match="no agent of type 'nobody'"):
        runtime.ref("nobody").ask(Echo(text="x"), timeout=5)


def test_asks_through_the_context_inherit_the_deadline_and_name_their_cause(
    runtime: Runtime,
) -> None:
    front = WorkerAgent.spawn(runtime, instance="front")
    OtherAgent.spawn(runtime, instance="back")
    deadline = time.time() + 3
    budget: Budget = front.ask(
        Forward(target="other", text="x"), deadline=deadline, message_id="req-1"
    )
    assert budget.deadline == deadline
    assert 0 < budget.remaining <= 3
    assert budget.correlation_id == "req-1"
    assert budget.sender == "worker/front"


def test_a_request_made_while_handling_another_inherits_its_trace_and_priority(
    runtime: Runtime,
) -> None:
    front = WorkerAgent.spawn(runtime, instance="front")
    OtherAgent.spawn(runtime, instance="back")
    cause = Metadata(
        id="http-1",
        deadline=time.time() + 2,
        priority=Priority.CRITICAL,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    budget: Budget = front.ask(Forward(target="other", text="x"), cause=cause)
    assert budget.traceparent == cause.traceparent
    assert budget.priority == Priority.CRITICAL
    assert budget.deadline == cause.deadline


def test_a_handler_that_overruns_its_deadline_by_the_margin_is_killed_as_hung() -> None:
    runtime = Runtime(node="hung", defaults=AgentDefaults(ask_timeout=1, hung_margin=0.02))
    try:
        ref = WorkerAgent.spawn(runtime)
        entered, release = gate("hung")
        stuck = ref.ask_async(Block(gate="hung"), timeout=0.01)
        assert entered.wait(5)
        queued = ref.ask_async(Echo(text="behind-hung"), timeout=5)
        done = threading.Event()
        exits: list[ExitReason] = []
        ref.link(lambda reason: (exits.append(reason), done.set()))
        assert done.wait(5)
        assert exits[0].kind is ExitKind.HUNG
        with pytest.raises(AgentStopped, match="hung"):
            queued.get(timeout=0)
        with pytest.raises((RequestTimeout, AgentStopped)):
            stuck.get(timeout=0)
        release.set()
    finally:
        runtime.close()
