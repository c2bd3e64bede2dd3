"""Real engines end to end: two llamacpp tiers in worker processes, across nodes, under load.

The models are random Llamas built here (tests/models.py): their text is
noise, but the grammar makes every decision valid JSON of its type, which
is what the support flow needs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import config
from actors.support import TicketCreated
from bridges import NatsServer, build_node
from config import decode
from messages import (
    AgentError,
    ChildRestarted,
    GenerateRequest,
    GenerateResult,
    Metadata,
    Overloaded,
    RequestTimeout,
    new_message_id,
)
from supervisors import Node
from tests.bridges.conftest import start_node_process
from tests.bridges.http_agents import ServedNodes
from tests.bridges.test_worker_processes import (
    ReadyWorkers,
    _toml,
    large_stats,
    node_settings,
    worker_child,
)
from tests.conftest import WAIT, EventRecorder
from tests.support.service import stored

pytestmark = pytest.mark.model

# A worker process imports the package, loads its model and connects.
WORKER_START = 60.0
# Generous: two cores, worker processes and the test share them.
GENERATION = 60.0


def llamacpp_tier(name: str, model: Path, **tier: Any) -> dict[str, Any]:
    return {
        "name": name,
        "process": True,
        "heartbeat": 0.5,
        "backend": {"kind": "llamacpp", "model_path": str(model), "n_ctx": 2048, "n_threads": 1},
        **tier,
    }


def meta(timeout: float = GENERATION) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout)


@pytest.fixture
def ready_workers(nats_server: NatsServer) -> Iterator[ReadyWorkers]:
    watch = ReadyWorkers(nats_server.url)
    yield watch
    watch.close()


@pytest.fixture
def small_ready(nats_server: NatsServer) -> Iterator[ReadyWorkers]:
    watch = ReadyWorkers(nats_server.url, tier="small")
    yield watch
    watch.close()


@pytest.fixture
def two_tiers(
    nats_server: NatsServer,
    large_gguf: Path,
    small_gguf: Path,
    ready_workers: ReadyWorkers,
    small_ready: ReadyWorkers,
) -> Iterator[Node]:
    """A node whose `large` and `small` tiers are llamacpp worker processes, both up."""
    settings = node_settings(
        nats_server.url,
        llamacpp_tier("large", large_gguf, breaker_threshold=1, breaker_cooldown=1.0),
        llamacpp_tier("small", small_gguf),
    )
    node = build_node(decode(settings))
    node.start()
    try:
        ready_workers.wait(1, timeout=WORKER_START)
        small_ready.wait(1, timeout=WORKER_START)
        yield node
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_a_real_model_streams_over_nats_to_a_caller_on_another_node(
    nats_server: NatsServer, tmp_path: Path, small_gguf: Path, ready_workers: ReadyWorkers
) -> None:
    toml = tmp_path / "model-node.toml"
    toml.write_text(_toml(node_settings(nats_server.url, llamacpp_tier("large", small_gguf))))
    serving = start_node_process(toml, "model-node", tmp_path / "model-node.log")
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
        [ready] = ready_workers.wait(1, timeout=WORKER_START)
        assert (ready.backend, ready.model, ready.capacity) == (
            "llamacpp",
            "af-test-small-q4_0-s0",
            1,
        )
        client = caller.runtime.inference
        assert client is not None
        stream = client.stream(GenerateRequest(prompt="Where is my order?", max_tokens=48), meta())
        chunks = [chunk.text for chunk in stream]
        result = stream.result
        assert len(chunks) > 1
        assert "".join(chunks) == result.text
        assert (result.backend, result.model, result.tier) == (
            "llamacpp",
            "af-test-small-q4_0-s0",
            "large",
        )
        assert result.usage.completion_tokens == 48
        assert result.usage.prompt_tokens > 1  # counted by the model's tokenizer, on the worker
    finally:
        caller.stop()
        assert caller.run(handle_signals=False) == 0
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(WAIT * 4) == 0
        assert serving.stdout is not None
        serving.stdout.close()


def test_closing_a_stream_frees_the_workers_slot_at_once(two_tiers: Node) -> None:
    client = two_tiers.runtime.inference
    assert client is not None
    stream = client.stream(
        GenerateRequest(prompt="tell me everything", max_tokens=1500, may_degrade=False), meta()
    )
    # Not its first chunk: how soon a random model's tokens make text
    # depends on the CPU's arithmetic. 1500 tokens take seconds anywhere.
    deadline = time.monotonic() + WAIT
    while large_stats(two_tiers).in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Whether the worker has taken it yet or not, closing cancels it there.
    stream.close()
    after = client.generate(GenerateRequest(prompt="hi", max_tokens=4, may_degrade=False), meta())
    large = large_stats(two_tiers)
    # Had the first generation run on, its 1500 tokens would be counted here.
    assert (after.tier, after.usage.completion_tokens) == ("large", 4)
    assert (large.cancelled, large.tokens) == (1, 4)


def test_a_generation_past_its_deadline_is_a_timeout_and_the_worker_serves_on(
    two_tiers: Node,
) -> None:
    client = two_tiers.runtime.inference
    assert client is not None
    long = GenerateRequest(prompt="tell me everything", max_tokens=1900, may_degrade=False)
    with pytest.raises(RequestTimeout):
        client.generate(long, meta(timeout=0.5))
    after = client.generate(GenerateRequest(prompt="hi", max_tokens=4, may_degrade=False), meta())
    assert (after.tier, after.usage.completion_tokens) == ("large", 4)


def test_a_killed_worker_process_opens_the_breaker_degrades_then_recovers(
    two_tiers: Node, ready_workers: ReadyWorkers
) -> None:
    recorder = EventRecorder()
    two_tiers.runtime.events.subscribe(recorder)
    client = two_tiers.runtime.inference
    assert client is not None
    os.kill(worker_child(two_tiers).pid or 0, signal.SIGKILL)
    recorder.wait_for(lambda e: isinstance(e, ChildRestarted) and e.child_id == "worker.large.0")
    assert large_stats(two_tiers).breaker == "open"
    degraded = client.generate(GenerateRequest(prompt="hi", max_tokens=4), meta())
    assert (degraded.tier, degraded.degraded, degraded.model) == (
        "small",
        True,
        "af-test-small-q4_0-s0",
    )
    with pytest.raises(Overloaded) as refused:
        client.generate(GenerateRequest(prompt="hi", max_tokens=4, may_degrade=False), meta())
    assert refused.value.retry_after is not None
    ready_workers.wait(2, timeout=WORKER_START)  # the restarted process has loaded its model
    time.sleep(refused.value.retry_after)  # the breaker's cooldown, the delay under test
    probe = client.generate(GenerateRequest(prompt="hi", max_tokens=4, may_degrade=False), meta())
    assert probe.tier == "large"
    assert large_stats(two_tiers).breaker == "closed"


def test_under_load_the_small_model_answers_what_the_large_one_cannot_in_time(
    two_tiers: Node,
) -> None:
    client = two_tiers.runtime.inference
    assert client is not None
    # One large generation, measured, sets the deadline: 1.5 of it.
    started = time.monotonic()
    client.generate(GenerateRequest(prompt="refund", max_tokens=96, may_degrade=False), meta())
    deadline = 1.5 * (time.monotonic() - started)
    answers: list[GenerateResult | AgentError] = []
    lock = threading.Lock()

    def ask() -> None:
        request = GenerateRequest(prompt="refund", max_tokens=96, may_degrade=True)
        try:
            answer: GenerateResult | AgentError = client.generate(request, meta(deadline))
        except AgentError as error:
            answer = error
        with lock:
            answers.append(answer)

    callers = [threading.Thread(target=ask) for _ in range(3)]  # 3x the large tier's one slot
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(GENERATION)
    assert len(answers) == 3  # every request got an answer: a result or a typed error
    served = [a for a in answers if isinstance(a, GenerateResult)]
    assert len(served) >= 2
    assert "small" in {a.tier for a in served}
    assert all(a.degraded == (a.tier == "small") for a in served)


def support_settings(nats_url: str, model: Path) -> config.Settings:
    """The reference service on one llamacpp tier, greedy, with room for whole decisions."""
    raw = tomllib.loads(config.default_toml())
    raw["node"]["name"] = f"support-model-{os.getpid()}"
    raw["nats"].update(url=nats_url, embed=False)
    raw["http"]["port"] = 0
    raw["inference"]["tiers"] = [llamacpp_tier("large", model)]
    for pool in raw["pools"]:
        if pool["agent"] == "actors.support:SupportAgent":
            # A random model fills every string to its maxLength: 2000
            # characters of answer are about 1200 of its tokens.
            pool["options"].update(max_tokens=1500, temperature=1.0)
    return config.decode(raw)


def test_the_support_flow_answers_from_a_real_engine_with_valid_decisions(
    nats_server: NatsServer, small_gguf: Path, ready_workers: ReadyWorkers
) -> None:
    served = ServedNodes()
    try:
        node, client = served.start(build_node(support_settings(nats_server.url, small_gguf)))
        ready_workers.wait(1, timeout=WORKER_START)
        tickets: dict[str, str] = {}
        intents = set()
        for n in range(6):
            request_id = f"model-support-{n}"
            body = {"user_id": "jane", "message": "My parcel arrived broken, I want a refund."}
            headers = {"X-Request-Id": request_id}
            reply = client.post(
                "/v1/agents/support", json=body, headers=headers, timeout=GENERATION
            )
            assert reply.status_code == httpx.codes.OK, reply.text
            answer = reply.json()
            intents.add(answer["intent"])
            assert answer["answer"]
            if answer["ticket_id"] is not None:
                tickets[request_id] = answer["ticket_id"]
                again = client.post(
                    "/v1/agents/support", json=body, headers=headers, timeout=GENERATION
                ).json()
                assert again["ticket_id"] == answer["ticket_id"]  # a retry opens no second one
        assert tickets, "no decision opened a ticket: pick other request ids"
        events = stored(nats_server.url, "af.evt.TicketCreated", TicketCreated)
        assert sorted(e.ticket_id for e in events) == sorted(tickets.values())
        assert len(intents) >= 1
        stats = large_stats(node)
        assert stats.admitted >= 12  # two generations per message, from the real engine
        assert stats.tokens > 0
    finally:
        served.stop_all()
