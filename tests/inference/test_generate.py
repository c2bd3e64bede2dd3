"""ctx.generate from agents, through a node assembled from settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import Agent, Context, Runtime, handler
from bridges import PoolClient, build_node
from config import decode
from messages import (
    BadRequest,
    GenerateRequest,
    GenerateResult,
    Message,
    TokenChunk,
    Unavailable,
)
from supervisors import Node
from tests.conftest import WAIT

SCRIPTED = {
    "kind": "scripted",
    "model": "script-7b",
    "rules": [{"pattern": "refund", "reply": "Refunds take five days."}],
}


class Ask(Message, frozen=True, kw_only=True):
    prompt: str
    stream: bool = False
    stop_after: int | None = None
    close: bool = True


class Answer(Message, frozen=True, kw_only=True):
    text: str
    tier: str
    backend: str
    chunks: list[str]


class WriterAgent(Agent):
    """Asks the pool, blocking or streaming."""

    @handler
    def ask(self, msg: Ask, ctx: Context) -> Answer:
        if not msg.stream:
            result: GenerateResult = ctx.generate(msg.prompt, max_tokens=32)
            return Answer(text=result.text, tier=result.tier, backend=result.backend, chunks=[])
        stream = ctx.generate_stream(msg.prompt)
        chunks: list[str] = []
        for chunk in stream:
            assert isinstance(chunk, TokenChunk)
            chunks.append(chunk.text)
            if msg.stop_after is not None and len(chunks) == msg.stop_after:
                if msg.close:
                    stream.close()
                break  # without close(): leaving the loop must free the slot too
        if msg.stop_after is not None:
            return Answer(text="", tier="", backend="", chunks=chunks)
        result = stream.result
        return Answer(text=result.text, tier=result.tier, backend=result.backend, chunks=chunks)


@pytest.fixture
def node() -> Iterator[Node]:
    settings = decode(
        {
            "nats": {"enabled": False},
            "inference": {
                "tiers": [
                    {"name": "large", "backend": {**SCRIPTED, "token_delay": 0.01}},
                    {"name": "small", "backend": SCRIPTED},
                ]
            },
            "pools": [{"agent": "tests.inference.test_generate:WriterAgent", "size": 1}],
        }
    )
    n = build_node(settings)
    n.start()
    yield n
    n.stop()
    assert n.run(handle_signals=False) == 0


def test_an_agent_generates_and_waits_for_the_result(node: Node) -> None:
    answer = node.runtime.ref("writer").ask(Ask(prompt="I want a refund"), timeout=WAIT)
    assert answer.text == "Refunds take five days."
    assert (answer.tier, answer.backend) == ("large", "scripted")


def test_an_agent_streams_a_generation_chunk_by_chunk(node: Node) -> None:
    answer = node.runtime.ref("writer").ask(Ask(prompt="refund?", stream=True), timeout=WAIT)
    assert answer.chunks == ["Refunds ", "take ", "five ", "days."]
    assert "".join(answer.chunks) == answer.text


def test_closing_a_stream_early_frees_the_slot(node: Node) -> None:
    writer = node.runtime.ref("writer")
    answer = writer.ask(Ask(prompt="refund?", stream=True, stop_after=1), timeout=WAIT)
    assert answer.chunks == ["Refunds "]
    # The only large slot is free again: the next request is served there.
    assert writer.ask(Ask(prompt="refund"), timeout=WAIT).tier == "large"


def test_leaving_a_stream_without_closing_it_frees_the_slot(node: Node) -> None:
    writer = node.runtime.ref("writer")
    answer = writer.ask(Ask(prompt="refund?", stream=True, stop_after=2, close=False), timeout=WAIT)
    assert answer.chunks == ["Refunds ", "take "]
    client = node.runtime.inference
    assert isinstance(client, PoolClient)
    client.io.run(client.pool.join(), timeout=WAIT)
    assert client.pool.statistics().tiers[0].cancelled == 1


def test_the_pool_is_in_the_tree_before_the_agents(node: Node) -> None:
    stats = node.root.statistics()
    assert [c.id for c in stats.children] == ["inference", "agents.writer"]
    [pool] = stats.children[0].supervisor.children  # type: ignore[union-attr]
    assert pool.detail is not None
    assert "large (scripted script-7b) 0/4 busy" in pool.detail


def test_bad_generate_arguments_are_a_bad_request(node: Node) -> None:
    class Bad(Agent):
        @handler
        def ask(self, msg: Ask, ctx: Context) -> None:
            ctx.generate(msg.prompt, max_tokens=0)

    ref = Bad.spawn(node.runtime)
    with pytest.raises(BadRequest, match="max_tokens"):
        ref.ask(Ask(prompt="x"), timeout=WAIT)

    class Unknown(Agent):
        @handler
        def ask(self, msg: Ask, ctx: Context) -> None:
            ctx.generate(GenerateRequest(prompt=msg.prompt), temperature=0.5)

    with pytest.raises(BadRequest, match="temperature"):
        Unknown.spawn(node.runtime).ask(Ask(prompt="x"), timeout=WAIT)


def test_without_a_pool_generate_is_unavailable(runtime: Runtime) -> None:
    ref = WriterAgent.spawn(runtime)
    with pytest.raises(Unavailable, match="no inference pool"):
        ref.ask(Ask(prompt="refund"), timeout=WAIT)
