"""Tools: the runtime checks permissions, validates arguments and results, dedups effects."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from actors import (
    Agent,
    Context,
    MemoryStore,
    Runtime,
    ToolCall,
    handler,
    tool,
)
from messages import (
    AgentDefinitionError,
    BadRequest,
    Forbidden,
    InternalError,
    Message,
)


class Add(msgspec.Struct, frozen=True, kw_only=True):
    a: int
    b: int


class Sum(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    run: int


runs = itertools.count(1)


@tool("calc.add", permission="calc:use")
def add(args: Add, call: ToolCall) -> Sum:
    return Sum(total=args.a + args.b, run=next(runs))


@tool("ledger.write", permission="ledger:write", side_effect=True)
def write(args: Add, call: ToolCall) -> Sum:
    # The side effect: count this call in the store.
    key = "ledger.writes"
    current = int(call.state.get(key) or b"0")
    call.state.put(key, str(current + 1).encode())
    return Sum(total=args.a + args.b, run=next(runs))


@tool("bad.result", permission="calc:use")
def bad_result(args: Add, call: ToolCall) -> Sum:
    return {"total": "not a number", "run": 0}  # type: ignore[return-value]


class UseTool(Message, frozen=True, kw_only=True):
    name: str
    args: dict[str, object]


class ToolUsed(Message, frozen=True, kw_only=True):
    total: int
    run: int


TOOLS = {t.name: t for t in (add, write, bad_result)}


class CalculatorAgent(Agent):
    agent_type = "calculator"
    permissions = frozenset({"calc:use", "ledger:write"})

    @handler
    def use(self, msg: UseTool, ctx: Context) -> ToolUsed:
        result = ctx.use(TOOLS[msg.name], msg.args)
        return ToolUsed(total=result.total, run=result.run)


class ReaderAgent(CalculatorAgent):
    agent_type = "reader"
    permissions = frozenset({"calc:use"})


@pytest.fixture
def runtime_with_state(runtime: Runtime) -> Runtime:
    runtime.state = MemoryStore()
    return runtime


def test_a_tool_runs_with_validated_arguments(runtime_with_state: Runtime) -> None:
    ref = CalculatorAgent.spawn(runtime_with_state)
    assert ref.ask(UseTool(name="calc.add", args={"a": 2, "b": 3}), timeout=2).total == 5


def test_an_agent_type_without_the_permission_is_refused(runtime_with_state: Runtime) -> None:
    ref = ReaderAgent.spawn(runtime_with_state)
    with pytest.raises(
        Forbidden, match=r"'reader' may not call tool ledger.write \(needs ledger:write\)"
    ):
        ref.ask(UseTool(name="ledger.write", args={"a": 1, "b": 1}), timeout=2)
    assert runtime_with_state.state is not None
    assert runtime_with_state.state.get("ledger.writes") is None


def test_a_grant_in_the_config_replaces_the_class_permissions(runtime_with_state: Runtime) -> None:
    runtime_with_state.grants["reader"] = frozenset({"ledger:write"})
    runtime_with_state.grants["calculator"] = frozenset()
    reader = ReaderAgent.spawn(runtime_with_state)
    calculator = CalculatorAgent.spawn(runtime_with_state)
    assert reader.ask(UseTool(name="ledger.write", args={"a": 1, "b": 1}), timeout=2).total == 2
    with pytest.raises(Forbidden):
        calculator.ask(UseTool(name="calc.add", args={"a": 1, "b": 1}), timeout=2)


def test_bad_arguments_are_a_bad_request(runtime_with_state: Runtime) -> None:
    ref = CalculatorAgent.spawn(runtime_with_state)
    with pytest.raises(BadRequest, match=r"bad arguments to tool calc.add"):
        ref.ask(UseTool(name="calc.add", args={"a": "two", "b": 3}), timeout=2)


def test_a_result_of_the_wrong_type_is_an_internal_error(runtime_with_state: Runtime) -> None:
    ref = CalculatorAgent.spawn(runtime_with_state)
    with pytest.raises(InternalError, match=r"tool bad\.result returned a bad result"):
        ref.ask(UseTool(name="bad.result", args={"a": 1, "b": 1}), timeout=2)


def test_a_retried_request_does_not_repeat_a_side_effect(runtime_with_state: Runtime) -> None:
    ref = CalculatorAgent.spawn(runtime_with_state)
    message = UseTool(name="ledger.write", args={"a": 1, "b": 2})
    first = ref.ask(message, message_id="req-1", timeout=2)
    again = ref.ask(message, message_id="req-1", timeout=2)
    other = ref.ask(message, message_id="req-2", timeout=2)
    assert first == again
    assert other.run != first.run
    assert runtime_with_state.state is not None
    assert runtime_with_state.state.get("ledger.writes") == b"2"


def test_the_same_request_id_with_other_arguments_is_another_call(
    runtime_with_state: Runtime,
) -> None:
    ref = CalculatorAgent.spawn(runtime_with_state)
    first = ref.ask(UseTool(name="ledger.write", args={"a": 1, "b": 2}), message_id="x", timeout=2)
    second = ref.ask(UseTool(name="ledger.write", args={"a": 5, "b": 5}), message_id="x", timeout=2)
    assert (first.total, second.total) == (3, 10)


def test_a_tool_must_annotate_its_arguments_and_result() -> None:
    with pytest.raises(AgentDefinitionError, match="annotate"):

        @tool("x.y", permission="p")
        def unannotated(args, call):  # type: ignore[no-untyped-def]
            return args
