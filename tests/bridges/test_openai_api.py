"""The OpenAI-compatible routes, with the official `openai` SDK as the client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from bridges import build_node
from config import decode
from supervisors import Node
from tests.bridges.http_agents import ServedNodes, base_url
from tests.conftest import WAIT

REPLY = "one two three four five"
JSON_REPLY = '{"answer": "yes"}'


def openai_node(**http: Any) -> Node:
    tiers = [
        {
            "name": "large",
            "queue_bound": 0,  # one at a time, nobody waits: a second is refused at once
            "backend": {
                "kind": "scripted",
                "model": "scripted-large",
                "default_reply": REPLY,
                "token_delay": 0.1,  # half a second a request: overload can be made
                "capacity": 1,
            },
        },
        {
            "name": "small",
            "backend": {"kind": "scripted", "model": "scripted-small", "default_reply": JSON_REPLY},
        },
        {
            "name": "single",  # one slot, one place in the queue, 3 s a generation
            "queue_bound": 1,
            "backend": {
                "kind": "scripted",
                "model": "scripted-single",
                "default_reply": " ".join(["word"] * 100),
                "token_delay": 0.03,
                "capacity": 1,
            },
        },
        {
            "name": "slow",  # 100 tokens, 3 s: still running when its stream is closed
            "backend": {
                "kind": "scripted",
                "model": "scripted-slow",
                "default_reply": " ".join(["word"] * 100),
                "token_delay": 0.03,
            },
        },
    ]
    raw = {
        "node": {"name": "oai"},
        "nats": {"enabled": False},
        "http": {"enabled": True, "port": 0, **http},
        "inference": {"tiers": tiers},
    }
    return build_node(decode(raw))


@pytest.fixture
def served() -> Iterator[tuple[Node, str]]:
    nodes = ServedNodes()
    node, _client = nodes.start(openai_node())
    try:
        yield node, base_url(node)
    finally:
        nodes.stop_all()


_OPEN: list[openai.OpenAI] = []


def sdk(url: str, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=options.pop("api_key", "none"), **options)
    _OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


# How soon a request that left its queue gives its place up.
GIVE_UP_WITHIN = 1.0


def in_flight(node: Node, tier: str = "large") -> int:
    return tier_statistics(node, tier).in_flight


def tier_statistics(node: Node, tier: str) -> Any:
    client = node.runtime.inference
    assert client is not None
    stats = client.pool.statistics()  # type: ignore[attr-defined]
    return next(t for t in stats.tiers if t.name == tier)


def test_a_chat_completion_names_the_tier_that_answered_and_counts_tokens(
    served: tuple[Node, str],
) -> None:
    _node, url = served
    done = sdk(url).chat.completions.create(
        model="large", messages=[{"role": "user", "content": "hello"}]
    )
    assert done.object == "chat.completion"
    assert (done.model, done.choices[0].message.content) == ("large", REPLY)
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert done.usage.completion_tokens == len(REPLY.split())
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    cut = sdk(url).chat.completions.create(
        model="large", messages=[{"role": "user", "content": "hello"}], max_completion_tokens=2
    )
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("one two ", "length")


def test_a_streamed_chat_completion_ends_with_its_reason_usage_and_done(
    served: tuple[Node, str],
) -> None:
    _node, url = served
    stream = sdk(url).chat.completions.create(
        model="large",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finished == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(REPLY.split())
    raw = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "small", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_the_async_client_and_the_legacy_completions_work_alike(served: tuple[Node, str]) -> None:
    _node, url = served

    async def ask() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none")
        try:
            chat = await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hello"}]
            )
            text = await client.completions.create(model="large", prompt="say", max_tokens=3)
        finally:
            await client.close()
        return chat.choices[0].message.content or "", text.choices[0].text

    chat, text = asyncio.run(ask())
    assert chat == REPLY
    assert text == "one two three "


def test_the_models_are_the_tiers_and_auto(served: tuple[Node, str]) -> None:
    _node, url = served
    assert [m.id for m in sdk(url).models.list()] == ["large", "small", "single", "slow", "auto"]


def test_a_schema_constrains_the_reply_where_the_tier_can(served: tuple[Node, str]) -> None:
    _node, url = served
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    done = sdk(url).chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "yes or no?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Answer", "schema": schema},
        },
    )
    assert json.loads(done.choices[0].message.content or "") == {"answer": "yes"}


def test_bad_requests_are_openai_errors_with_the_right_status(served: tuple[Node, str]) -> None:
    _node, url = served
    client = sdk(url, max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:  # as OpenAI answers an unknown model
        client.chat.completions.create(model="huge", messages=[{"role": "user", "content": "x"}])
    assert "no tier named 'huge'" in unknown.value.message
    assert unknown.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="large", messages=[{"role": "user", "content": "x"}], n=2
        )
    body = httpx.post(f"{url}/v1/chat/completions", json={"model": "large"}).json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "invalid_request_error"


def test_a_key_is_asked_for_as_on_the_other_routes() -> None:
    nodes = ServedNodes()
    node, _client = nodes.start(openai_node(api_keys=["sk-test"]))
    try:
        url = base_url(node)
        with pytest.raises(openai.AuthenticationError):
            sdk(url, api_key="sk-wrong", max_retries=0).models.list()
        assert [m.id for m in sdk(url, api_key="sk-test").models.list()][-1] == "auto"
    finally:
        nodes.stop_all()


@pytest.mark.slow
def test_overload_is_a_429_with_retry_after_which_the_sdk_waits_out(
    served: tuple[Node, str],
) -> None:
    node, url = served
    statuses: list[int] = []
    seen = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    busy = sdk(url).chat.completions.create(
        model="large", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    next(iter(busy))  # the large tier's one slot is taken, and nobody may wait for it
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(url, max_retries=0).chat.completions.create(
            model="large", messages=[{"role": "user", "content": "x"}]
        )
    assert int(refused.value.response.headers["retry-after"]) >= 1
    done = sdk(url, max_retries=3, http_client=seen).chat.completions.create(
        model="large", messages=[{"role": "user", "content": "x"}]
    )
    list(busy)
    # Refused while the slot was taken, it came back after Retry-After and got its answer.
    assert statuses[0] == 429
    assert statuses[-1] == 200
    assert done.choices[0].message.content == REPLY
    assert in_flight(node) == 0


def test_closing_a_stream_cancels_the_generation_and_frees_its_slot(
    served: tuple[Node, str],
) -> None:
    node, url = served
    stream = sdk(url).chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    next(iter(stream))
    assert in_flight(node, "slow") == 1
    stream.close()
    deadline = time.monotonic() + WAIT
    while in_flight(node, "slow"):
        assert time.monotonic() < deadline, "the generation ran on"
        time.sleep(0.01)


def test_the_routes_answers_are_counted_in_the_metrics_by_status(
    served: tuple[Node, str],
) -> None:
    _node, url = served
    client = sdk(url, max_retries=0)
    client.chat.completions.create(model="large", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="huge", prompt="x")
    scraped = httpx.get(f"{url}/metrics").text
    counted = {
        line.split("status=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("actorfleet_requests_seconds_count") and 'agent_type="openai"' in line
    }
    assert counted == {"200": 1.0, "404": 1.0}


@pytest.mark.slow
def test_a_stream_whose_client_leaves_while_it_waits_in_the_queue_gives_its_place_up(
    served: tuple[Node, str],
) -> None:
    node, url = served
    running = sdk(url).chat.completions.create(
        model="single", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    next(iter(running))  # the tier's one slot is taken
    body = json.dumps(
        {"model": "single", "messages": [{"role": "user", "content": "x"}], "stream": True}
    ).encode()
    parts = httpx.URL(url)
    with socket.create_connection((parts.host, parts.port or 80)) as waiting:
        waiting.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        deadline = time.monotonic() + WAIT
        while tier_statistics(node, "single").queued != 1:
            assert time.monotonic() < deadline, "the request never queued"
            time.sleep(0.01)
    # Well before the running generation ends (3 s), so not because it did.
    deadline = time.monotonic() + GIVE_UP_WITHIN
    while tier_statistics(node, "single").queued:
        assert time.monotonic() < deadline, "the place in the queue was kept"
        time.sleep(0.01)
    assert in_flight(node, "single") == 1
    running.close()


def test_tools_and_logprobs_are_refused_not_ignored(served: tuple[Node, str]) -> None:
    _node, url = served
    client = sdk(url, max_retries=0)
    message = [{"role": "user", "content": "x"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="large", messages=message, tools=[tool])  # type: ignore[list-item]
    assert "tool" in tools.value.message
    with pytest.raises(openai.BadRequestError) as logprobs:
        client.chat.completions.create(model="large", messages=message, logprobs=True)
    assert "logprobs" in logprobs.value.message


def test_a_schema_or_a_stop_over_its_bound_is_refused(served: tuple[Node, str]) -> None:
    _node, url = served
    client = sdk(url, max_retries=0)
    message = [{"role": "user", "content": "x"}]
    huge = {"type": "object", "description": "x" * 70_000}
    with pytest.raises(openai.BadRequestError) as schema:
        client.chat.completions.create(
            model="small",
            messages=message,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": huge}},  # type: ignore[typeddict-item]
        )
    assert "json_schema" in schema.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="large", messages=message, stop=["x" * 300])


def test_a_missing_key_is_openais_invalid_api_key() -> None:
    nodes = ServedNodes()
    node, _client = nodes.start(openai_node(api_keys=["right-key-0123456789"]))
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(base_url(node), api_key="wrong", max_retries=0).models.list()
        assert refused.value.code == "invalid_api_key"
    finally:
        nodes.stop_all()
