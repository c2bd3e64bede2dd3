"""Agent replies streamed as Server-Sent Events, here and from another node."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from actors import Runtime
from bridges import NatsServer, build_node
from bridges.cli._main import main
from config import decode
from tests.bridges.http_agents import Story, StoryAgent, StoryPart, Tell, base_url
from tests.conftest import WAIT

PARTS = ["part 0 ", "part 1 ", "part 2 "]


def read_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with connect_sse(client, "POST", path, json=body) as source:
        assert source.response.status_code == 200
        return [(e.event, json.loads(e.data)) for e in source.iter_sse()]


def test_an_agent_that_emits_chunks_streams_them_then_its_reply(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    events = read_events(client, "/v1/agents/story/stream", {"parts": 3})
    assert [kind for kind, _ in events] == ["chunk", "chunk", "chunk", "result"]
    assert [data["text"] for _, data in events[:3]] == PARTS
    assert events[-1][1] == {"type": "Story", "text": "".join(PARTS), "streamed": True}


def test_a_plain_ask_of_a_streaming_agent_gets_only_the_reply(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.post("/v1/agents/story", json={"parts": 2})
    assert response.json() == {"type": "Story", "text": "part 0 part 1 ", "streamed": False}
    assert client.post("/v1/agents/echo/stream", json={}).status_code == 404  # echo does not


def test_closing_the_stream_drops_the_handlers_further_chunks(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    with connect_sse(
        client, "POST", "/v1/agents/story/stream", json={"parts": 6, "pause": 0.1}
    ) as s:
        events = s.iter_sse()  # held: a dropped iterator closes the response
        assert next(events).event == "chunk"
    assert StoryAgent.finished.wait(WAIT)
    assert StoryAgent.dropped  # the handler went on; its chunks went nowhere


def test_streamed_replies_cross_nats(
    nats_server: NatsServer, connect: Any, other_runtime: Runtime
) -> None:
    story = "tests.bridges.http_agents:StoryAgent"
    worker = build_node(
        decode(
            {
                "node": {"name": "worker"},
                "nats": {"url": nats_server.url, "embed": False},
                "pools": [{"agent": story, "size": 1}],
            }
        )
    )
    gateway = build_node(
        decode(
            {
                "node": {"name": "gateway"},
                "nats": {"url": nats_server.url, "embed": False},
                "http": {"enabled": True, "port": 0, "agents": [story]},
            }
        )
    )
    worker.start()
    gateway.start()
    try:
        with httpx.Client(base_url=base_url(gateway), timeout=WAIT) as client:
            events = read_events(client, "/v1/agents/story/stream", {"parts": 3})
        connect(other_runtime)
        chunks: list[StoryPart] = []
        reply = other_runtime.ref("story").ask_async(Tell(parts=2), on_chunk=chunks.append)
        final = reply.get()
    finally:
        gateway.stop()
        gateway.run(handle_signals=False)
        worker.stop()
        worker.run(handle_signals=False)
    assert [kind for kind, _ in events] == ["chunk", "chunk", "chunk", "result"]
    assert [data["text"] for _, data in events[:3]] == PARTS
    assert chunks == [StoryPart(index=0, text="part 0 "), StoryPart(index=1, text="part 1 ")]
    assert final == Story(text="part 0 part 1 ", streamed=True)


def test_actorfleet_send_stream_prints_chunks_as_they_arrive(
    serve: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, client = serve()
    url = str(client.base_url).rstrip("/")
    body = '{"parts": 3, "pause": 0}'
    assert main(["send", "story", body, "--stream", "--url", url]) == 0
    out = capsys.readouterr().out
    [first, second, third, *result] = out.splitlines()
    assert [json.loads(line)["index"] for line in (first, second, third)] == [0, 1, 2]
    assert json.loads("\n".join(result))["text"] == "part 0 part 1 part 2 "
