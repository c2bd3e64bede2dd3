"""The openai backend against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgspec
import pytest

from inference import InferencePool, TierSpec
from inference._openai import OpenAIBackend
from messages import (
    ChatMessage,
    FinishReason,
    GenerateRequest,
    Metadata,
    NotFound,
    Overloaded,
    Sampling,
    TokenChunk,
    Unavailable,
    new_message_id,
)
from tests.inference.openai_server import MODEL, OpenAIServer

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    s = OpenAIServer().start()
    yield s
    s.stop()


def meta(timeout: float = 5.0) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout)


def pool_for(url: str, model: str = MODEL) -> tuple[InferencePool, OpenAIBackend]:
    backend = OpenAIBackend(url, model, capacity=2)
    return InferencePool([TierSpec(name="remote", workers=[backend])]), backend


async def test_a_generation_streams_from_the_server(server: OpenAIServer) -> None:
    pool, backend = pool_for(server.url)
    chunks: list[TokenChunk] = []
    try:
        result = await pool.submit(
            GenerateRequest(messages=[ChatMessage(role="user", content="hello there")]),
            meta(),
            on_chunk=chunks.append,
        )
    finally:
        await backend.aclose()
    assert result.text == "echo: hello there"
    assert [c.text for c in chunks] == ["echo: ", "hello ", "there"]
    assert (result.backend, result.model, result.finish_reason) == ("openai", MODEL, "stop")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 3)


async def test_sampling_seed_stop_and_max_tokens_reach_the_server(server: OpenAIServer) -> None:
    pool, backend = pool_for(server.url)
    request_meta = msgspec.structs.replace(meta(), traceparent=TRACEPARENT, tracestate="af=1")
    request = GenerateRequest(
        prompt="one two three four",
        max_tokens=2,
        sampling=Sampling(temperature=0.7, top_p=0.9, top_k=40),
        seed=1234,
        stop=["END"],
    )
    try:
        result = await pool.submit(request, request_meta)
    finally:
        await backend.aclose()
    [sent] = server.requests
    [headers] = server.headers
    assert headers["x-request-id"] == request_meta.id
    assert (headers["traceparent"], headers["tracestate"]) == (TRACEPARENT, "af=1")
    assert sent["messages"] == [{"role": "user", "content": "one two three four"}]
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.7, 0.9, 40)
    assert (sent["seed"], sent["stop"], sent["max_tokens"], sent["stream"]) == (
        1234,
        ["END"],
        2,
        True,
    )
    assert (result.text, result.finish_reason) == ("echo: one ", FinishReason.LENGTH)


async def test_server_refusals_become_typed_errors(server: OpenAIServer) -> None:
    pool, backend = pool_for(server.url)
    try:
        with pytest.raises(Overloaded) as limited:
            await pool.submit(GenerateRequest(prompt="overload me"), meta())
        assert limited.value.retry_after == 2.0
        with pytest.raises(Unavailable, match="worker failed"):
            await pool.submit(GenerateRequest(prompt="crash now"), meta())
        assert pool.statistics().tiers[0].failures == 1
    finally:
        await backend.aclose()
    other, other_backend = pool_for(server.url, model="no-such-model")
    try:
        with pytest.raises(NotFound, match="model"):
            await other.submit(GenerateRequest(prompt="hi"), meta())
    finally:
        await other_backend.aclose()


async def test_a_server_that_is_down_counts_against_the_breaker() -> None:
    pool, backend = pool_for("http://127.0.0.1:9/v1")
    try:
        with pytest.raises(Unavailable):
            await pool.submit(GenerateRequest(prompt="anyone?"), meta())
    finally:
        await backend.aclose()
    assert pool.statistics().tiers[0].failures == 1


async def test_a_caller_that_goes_away_closes_the_stream_and_frees_the_slot(
    server: OpenAIServer,
) -> None:
    pool, backend = pool_for(server.url)
    first = asyncio.Event()
    try:
        task = asyncio.ensure_future(
            pool.submit(
                GenerateRequest(prompt="slow " * 20),
                meta(),
                on_chunk=lambda _chunk: first.set(),
            )
        )
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(pool.join(), 5)
        assert pool.statistics().tiers[0].in_flight == 0
        assert len(server.requests) == 1
    finally:
        await backend.aclose()


@pytest.mark.parametrize("prompt", ["midfail", "truncate", "abort", "nostream"])
async def test_a_stream_that_breaks_is_a_worker_failure_not_a_result(
    server: OpenAIServer, prompt: str
) -> None:
    pool, backend = pool_for(server.url)
    try:
        with pytest.raises(Unavailable, match="worker failed"):
            await pool.submit(GenerateRequest(prompt=prompt), meta())
    finally:
        await backend.aclose()
    assert pool.statistics().tiers[0].failures == 1
