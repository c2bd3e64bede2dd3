"""Generations over HTTP: JSON, Server-Sent Events, and cancellation on disconnect."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import connect_sse

from bridges import PoolClient
from supervisors import Node
from tests.conftest import WAIT

_LOOK_AGAIN = 0.01
WORDS = ["one ", "two ", "three ", "four ", "five"]


def eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition the server reaches on its own schedule.

    A client that gives up on a JSON generation cannot know whether the
    server had admitted it yet, so there is no event to wait on (the pool
    may still be idle); this looks at the pool until it agrees.
    """
    limit = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < limit, "the condition did not hold in time"
        time.sleep(_LOOK_AGAIN)


def join(node: Node) -> None:
    """Wait (bounded) until the node's pool has nothing running or queued."""
    client = node.runtime.inference
    assert isinstance(client, PoolClient)
    client.io.run(client.pool.join(), timeout=WAIT)


def pool_stats(node: Node) -> Any:
    client = node.runtime.inference
    assert isinstance(client, PoolClient)

    async def read() -> Any:
        return client.pool.statistics()

    return client.io.run(read(), timeout=WAIT)


def test_a_generation_answers_as_json(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 3})
    assert response.status_code == 200
    body = response.json()
    assert (body["text"], body["finish_reason"]) == ("one two three ", "length")
    assert (body["backend"], body["tier"]) == ("scripted", "large")


def test_a_generation_streams_as_server_sent_events(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    with connect_sse(client, "POST", "/v1/generate/stream", json={"prompt": "hi"}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    chunks = [data for event, data in events if event == "chunk"]
    assert [c["text"] for c in chunks] == WORDS
    assert [c["index"] for c in chunks] == list(range(len(WORDS)))
    assert events[-1][0] == "result"
    assert events[-1][1]["text"] == "".join(WORDS)


def test_a_refused_generation_ends_its_stream_with_an_error_event(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    request = {"prompt": "hi", "tier": "nonexistent"}
    with connect_sse(client, "POST", "/v1/generate/stream", json=request) as source:
        events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    assert events == [
        (
            "error",
            {
                "title": "Not Found",
                "status": 404,
                "code": "not_found",
                "detail": "no tier named 'nonexistent'; tiers: large",
            },
        )
    ]
    empty = client.post("/v1/generate/stream", json={"prompt": " "})
    assert (empty.status_code, empty.json()["code"]) == (400, "bad_request")


def test_closing_the_stream_cancels_the_generation_and_frees_its_slot(
    serve: Callable[..., Any],
) -> None:
    node, client = serve()
    request = {"prompt": "hi", "max_tokens": 5}
    with connect_sse(client, "POST", "/v1/generate/stream", json=request) as source:
        events = source.iter_sse()  # held: a dropped iterator closes the response
        first = next(events)
        assert first.event == "chunk"
        assert pool_stats(node).tiers[0].in_flight == 1
    # The connection is closed: the server notices and cancels; the pool goes idle.
    join(node)
    large = pool_stats(node).tiers[0]
    assert (large.in_flight, large.cancelled) == (0, 1)


def test_a_client_that_disconnects_from_a_json_generation_frees_its_slot(
    serve: Callable[..., Any],
) -> None:
    node, client = serve()
    with contextlib.suppress(httpx.ReadTimeout):
        client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 5}, timeout=0.05)
    eventually(lambda: pool_stats(node).tiers[0].cancelled == 1)
    large = pool_stats(node).tiers[0]
    assert (large.in_flight, large.cancelled) == (0, 1)
