"""Model workers as OS processes: supervised, killed, breakers, streaming across nodes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bridges import IoLoop, NatsServer, build_node
from bridges.node._build import INFERENCE_NAME
from config import decode
from messages import (
    ChildRestarted,
    GenerateRequest,
    Metadata,
    Overloaded,
    TokenChunk,
    WorkerReady,
    decoder_for,
    new_message_id,
)
from supervisors import ChildStatistics, Node
from tests.bridges.conftest import start_node_process
from tests.conftest import WAIT, EventRecorder

pytestmark = pytest.mark.slow

REPLY = "the large model answers in several words"
# A worker process imports the package and connects: allow it a few seconds.
WORKER_START = 20.0


def large_tier(**tier: Any) -> dict[str, Any]:
    return {
        "name": "large",
        "process": True,
        "heartbeat": 0.25,
        "backend": {
            "kind": "scripted",
            "model": "scripted-large",
            "default_reply": REPLY,
            "token_delay": 0.02,
            "capacity": 2,
        },
        **tier,
    }


SMALL_TIER = {
    "name": "small",
    "backend": {"kind": "scripted", "model": "scripted-small", "default_reply": "small"},
}


def node_settings(url: str, *tiers: dict[str, Any], name: str = "n1") -> dict[str, Any]:
    return {
        "node": {"name": name},
        "nats": {"url": url, "embed": False},
        "http": {"enabled": False},
        "supervision": {"max_restarts": 10, "backoff": {"base": 0.05, "cap": 0.2}},
        "inference": {"tiers": list(tiers)},
    }


def meta(timeout: float = WAIT) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout)


class ReadyWorkers:
    """Counts `WorkerReady` announcements of a tier, and waits (bounded) for them.

    Start it before the workers: an announcement made before it listens is
    not heard.
    """

    def __init__(self, url: str, tier: str = "large") -> None:
        self._io = IoLoop(name="ready-workers").start()
        self._seen: list[WorkerReady] = []
        self._changed = threading.Condition()
        self._nc = self._io.run(self._listen(url, tier), timeout=WAIT)

    async def _listen(self, url: str, tier: str) -> Client:
        nc = await nats.connect(url)
        await nc.subscribe(f"af.inf.{tier}.ready", cb=self._on_ready)
        await nc.flush()
        return nc

    async def _on_ready(self, msg: Msg) -> None:
        ready = decoder_for(WorkerReady).decode(msg.data)
        with self._changed:
            self._seen.append(ready)
            self._changed.notify_all()

    def wait(self, count: int, *, timeout: float = WORKER_START) -> list[WorkerReady]:
        """The first `count` announcements, once there are that many."""
        with self._changed:
            heard = self._changed.wait_for(lambda: len(self._seen) >= count, timeout)
            seen = list(self._seen)
        assert heard, f"{len(seen)} workers ready within {timeout} s, expected {count}"
        return seen[:count]

    def close(self) -> None:
        self._io.run(self._nc.close(), timeout=WAIT)
        self._io.stop()


@pytest.fixture
def ready_workers(nats_server: NatsServer) -> Iterator[ReadyWorkers]:
    watch = ReadyWorkers(nats_server.url)
    yield watch
    watch.close()


def worker_child(node: Node, index: int = 0) -> ChildStatistics:
    [inference] = [c for c in node.root.statistics().children if c.id == INFERENCE_NAME]
    assert inference.supervisor is not None
    [child] = [c for c in inference.supervisor.children if c.id == f"worker.large.{index}"]
    return child


def large_stats(node: Node) -> Any:
    client = node.runtime.inference
    assert client is not None
    pool = client.pool  # type: ignore[attr-defined]
    # Read on the loop the pool runs on, after anything queued there.
    return client.io.run(_read(pool.statistics), timeout=WAIT).tiers[0]  # type: ignore[attr-defined]


async def _read(read: Any) -> Any:
    return read()


def test_the_breaker_opens_when_the_worker_process_keeps_dying_and_closes_after_recovery(
    nats_server: NatsServer, ready_workers: ReadyWorkers
) -> None:
    settings = decode(
        node_settings(
            nats_server.url,
            large_tier(breaker_threshold=2, breaker_cooldown=2.0),
            SMALL_TIER,
        )
    )
    node = build_node(settings)
    recorder = EventRecorder()
    node.runtime.events.subscribe(recorder)
    node.start()
    try:
        client = node.runtime.inference
        assert client is not None
        ready_workers.wait(1)
        first = client.generate(GenerateRequest(prompt="hi", may_degrade=True), meta())
        assert (first.tier, first.backend, first.text) == ("large", "scripted", REPLY)

        for kill in (1, 2):
            ready_workers.wait(kill)  # the worker to kill is up
            os.kill(worker_child(node).pid or 0, signal.SIGKILL)
            recorder.wait_for(
                lambda e: isinstance(e, ChildRestarted) and e.child_id == "worker.large.0",
                count=kill,
            )
        large = large_stats(node)
        assert (large.failures, large.breaker) == (2, "open")

        degraded = client.generate(GenerateRequest(prompt="hi", may_degrade=True), meta())
        assert (degraded.tier, degraded.degraded) == ("small", True)
        with pytest.raises(Overloaded) as refused:
            client.generate(GenerateRequest(prompt="hi", may_degrade=False), meta())
        assert refused.value.retry_after is not None

        ready_workers.wait(3)  # the third process since start
        time.sleep(refused.value.retry_after)  # the breaker's cooldown, the delay under test
        probe = client.generate(GenerateRequest(prompt="hi", may_degrade=False), meta())
        assert probe.tier == "large"
        assert large_stats(node).breaker == "closed"
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_a_generation_streams_over_nats_to_a_caller_on_another_node(
    nats_server: NatsServer, tmp_path: Path, ready_workers: ReadyWorkers
) -> None:
    config = tmp_path / "worker-node.toml"
    raw = node_settings(nats_server.url, large_tier(), name="gpu-node")
    raw["inference"]["tiers"][0]["backend"]["token_delay"] = 0.05
    config.write_text(_toml(raw))
    serving = start_node_process(config, "gpu-node", tmp_path / "gpu-node.log")
    caller = build_node(
        decode(
            node_settings(
                nats_server.url,
                {"name": "large", "backend": {"kind": "remote", "capacity": 1}},
                name="api-node",
            )
        )
    )
    caller.start()
    try:
        [ready] = ready_workers.wait(1)
        assert (ready.backend, ready.model, ready.capacity) == ("scripted", "scripted-large", 2)
        client = caller.runtime.inference
        assert client is not None
        stream = client.stream(GenerateRequest(prompt="hi"), meta())
        chunks: list[TokenChunk] = []
        ended_before_first_chunk = None
        for chunk in stream:
            if not chunks:
                ended_before_first_chunk = stream._future.done()
            chunks.append(chunk)
        result = stream.result
        assert ended_before_first_chunk is False
        assert "".join(c.text for c in chunks) == REPLY
        assert (result.tier, result.backend, result.model) == (
            "large",
            "scripted",
            "scripted-large",
        )
    finally:
        caller.stop()
        assert caller.run(handle_signals=False) == 0
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(WAIT * 2) == 0
        assert serving.stdout is not None
        serving.stdout.close()


def _toml(raw: dict[str, Any]) -> str:
    """The settings as TOML (JSON values are valid TOML values for these types)."""
    lines: list[str] = []
    tiers = raw["inference"].pop("tiers")
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines.extend(_table(values, section))
    for tier in tiers:
        backend = tier.pop("backend")
        lines.append("[[inference.tiers]]")
        lines.extend(f"{k} = {_value(v)}" for k, v in tier.items())
        lines.append("[inference.tiers.backend]")
        lines.extend(f"{k} = {_value(v)}" for k, v in backend.items())
    return "\n".join(lines) + "\n"


def _table(values: dict[str, Any], prefix: str) -> list[str]:
    lines = [f"{k} = {_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"[{prefix}.{key}]")
            lines.extend(_table(value, f"{prefix}.{key}"))
    return lines


def _value(value: Any) -> str:
    return msgspec.json.encode(value).decode()
