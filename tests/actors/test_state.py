from __future__ import annotations

import pytest

from actors import Agent, Context, MemoryStore, Runtime, handler, state_key
from messages import Message, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Remember(Message, frozen=True, kw_only=True):
    conversation_id: str
    text: str


class Recall(Message, frozen=True, kw_only=True):
    conversation_id: str


class MemoryAgent(Agent):
    @handler
    def remember(self, msg: Remember, ctx: Context) -> None:
        ctx.state.put(state_key("conv", msg.conversation_id), msg.text.encode())

    @handler
    def recall(self, msg: Recall, ctx: Context) -> str | None:
        value = ctx.state.get(state_key("conv", msg.conversation_id))
        return None if value is None else value.decode()


def test_values_expire_after_their_ttl() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    store.put("k", b"v", ttl=10)
    store.put("forever", b"x")
    clock.now += 9.9
    assert store.get("k") == b"v"
    clock.now += 0.2
    assert store.get("k") is None
    assert store.get("forever") == b"x"


def test_compare_and_set_claims_a_key_once() -> None:
    store = MemoryStore()
    assert store.compare_and_set("idem.msg-1", None, b"ticket-1")
    assert not store.compare_and_set("idem.msg-1", None, b"ticket-2")
    assert store.get("idem.msg-1") == b"ticket-1"
    assert store.compare_and_set("idem.msg-1", b"ticket-1", b"ticket-3")


def test_an_expired_key_can_be_claimed_again() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    assert store.compare_and_set("lock", None, b"a", ttl=1)
    clock.now += 2
    assert store.compare_and_set("lock", None, b"b")


def test_delete_removes_a_key() -> None:
    store = MemoryStore()
    store.put("k", b"v")
    store.delete("k")
    store.delete("absent")
    assert store.get("k") is None


def test_state_outlives_the_agent_that_wrote_it() -> None:
    runtime = Runtime(node="state", state=MemoryStore())
    try:
        first = MemoryAgent.spawn(runtime)
        first.ask(Remember(conversation_id="c1", text="refund requested"))
        first.kill()
        second = MemoryAgent.spawn(runtime)
        assert second.ask(Recall(conversation_id="c1")) == "refund requested"
    finally:
        runtime.close()


def test_a_node_without_a_state_store_answers_unavailable(runtime: Runtime) -> None:
    ref = MemoryAgent.spawn(runtime)
    with pytest.raises(Unavailable, match="no state store"):
        ref.ask(Recall(conversation_id="c1"))
    assert ref.alive
