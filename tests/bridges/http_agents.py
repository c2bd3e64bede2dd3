"""Agents the HTTP tests serve (importable by path from settings), and their node."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, ClassVar

import httpx
import msgspec

from actors import Agent, Context, handler
from bridges import build_node
from config import decode
from messages import (
    BadRequest,
    ChildRestarted,
    Forbidden,
    Message,
    NotFound,
    Overloaded,
    RequestTimeout,
    Unavailable,
)
from supervisors import Node
from tests.conftest import WAIT, EventRecorder


class Say(Message, frozen=True, kw_only=True):
    """Say `text` back, after `delay` seconds."""

    text: Annotated[str, msgspec.Meta(max_length=10_000)]
    delay: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.0


class FailWith(Message, frozen=True, kw_only=True):
    """FailWith with the typed error `code` (or crash)."""

    code: str


class Said(Message, frozen=True, kw_only=True):
    text: str
    handled_by: str


_ERRORS = {
    "bad_request": BadRequest("no good"),
    "forbidden": Forbidden("not yours"),
    "not_found": NotFound("no such thing"),
    "overloaded": Overloaded("busy", retry_after=2.5),
    "timeout": RequestTimeout("too slow"),
    "unavailable": Unavailable("gone"),
}


class EchoAgent(Agent):
    """Echoes text; fails on request."""

    agent_type = "echo"
    handled: ClassVar[list[str]] = []
    started: ClassVar[threading.Event] = threading.Event()

    @handler
    def echo(self, msg: Say, ctx: Context) -> Said:
        EchoAgent.started.set()
        if msg.delay:
            time.sleep(msg.delay)
        EchoAgent.handled.append(msg.text)
        return Said(text=msg.text, handled_by=self.name)

    @handler
    def fail(self, msg: FailWith, ctx: Context) -> Said:
        error = _ERRORS.get(msg.code)
        if error is None:
            raise RuntimeError("secret internals /etc/passwd")
        raise error


def http_node(telemetry: dict[str, Any] | None = None, **http: Any) -> Node:
    raw = {
        "node": {"name": "web"},
        "telemetry": telemetry or {},
        "nats": {"enabled": False},
        "http": {"enabled": True, "port": 0, **http},
        "pools": [
            {"agent": "tests.bridges.http_agents:EchoAgent", "size": 1},
            {"agent": "actors:PingAgent", "size": 1},
            {"agent": "tests.bridges.http_agents:StoryAgent", "size": 1},
        ],
        "inference": {
            "tiers": [
                {
                    "name": "large",
                    "backend": {
                        "kind": "scripted",
                        "model": "scripted-large",
                        "default_reply": "one two three four five",
                        "token_delay": 0.02,
                        "capacity": 1,
                    },
                }
            ]
        },
    }
    return build_node(decode(raw))


def base_url(node: Node) -> str:
    [bridges] = [c for c in node.root.statistics().children if c.id == "bridges"]
    assert bridges.supervisor is not None
    [http] = [c for c in bridges.supervisor.children if c.id == "http"]
    assert http.detail is not None
    return http.detail.split()[1].rstrip(",")


class ServedNodes:
    """Nodes a test started, each with an HTTP client; all stopped at the end."""

    def __init__(self) -> None:
        self.started: list[tuple[Node, httpx.Client]] = []

    def start(self, node: Node) -> tuple[Node, httpx.Client]:
        node.start()
        client = httpx.Client(base_url=base_url(node), timeout=WAIT)
        self.started.append((node, client))
        return node, client

    def stop_all(self) -> None:
        for node, client in self.started:
            client.close()
            node.stop()
            assert node.run(handle_signals=False) == 0


class Summarise(Message, frozen=True, kw_only=True):
    """Summarise `text` with the node's model."""

    text: str


class Summary(Message, frozen=True, kw_only=True):
    text: str
    model: str


class SummaryAgent(Agent):
    """Asks the inference pool for a summary."""

    agent_type = "summary"

    @handler
    def summarise(self, msg: Summarise, ctx: Context) -> Summary:
        result = ctx.generate(msg.text, max_tokens=3)
        return Summary(text=result.text, model=result.model)


class Tell(Message, frozen=True, kw_only=True):
    """Tell a story in `parts` parts, `pause` seconds apart."""

    parts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    pause: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class StoryPart(Message, frozen=True, kw_only=True):
    index: int
    text: str


class Story(Message, frozen=True, kw_only=True):
    text: str
    streamed: bool


class StoryAgent(Agent):
    """Tells a story part by part (its replies stream)."""

    agent_type = "story"
    chunk_type = StoryPart
    dropped: ClassVar[list[int]] = []
    finished: ClassVar[threading.Event] = threading.Event()

    @handler
    def tell(self, msg: Tell, ctx: Context) -> Story:
        parts = []
        for index in range(msg.parts):
            text = f"part {index} "
            parts.append(text)
            if not ctx.emit(StoryPart(index=index, text=text)) and ctx.streaming:
                StoryAgent.dropped.append(index)
            time.sleep(msg.pause)
        StoryAgent.finished.set()
        return Story(text="".join(parts), streamed=ctx.streaming)


def crash_echo(node: Node, client: httpx.Client) -> None:
    """Crash the echo agent with a request (a 500) and wait until it is restarted."""
    recorder = EventRecorder()
    unsubscribe = node.runtime.events.subscribe(recorder)
    try:
        answer = client.post("/v1/agents/echo", json={"type": "FailWith", "code": "x"})
        assert answer.status_code == 500
        recorder.wait_for(lambda e: isinstance(e, ChildRestarted) and e.supervisor == "agents.echo")
    finally:
        unsubscribe()
