"""The same agents on a model server (OpenAI-compatible, on loopback), not the scripted rules."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from actors import state_key
from bridges import NatsServer
from messages import GenerationAudited
from tests.conftest import WAIT
from tests.inference.openai_server import MODEL, OpenAIServer
from tests.support.conftest import Service
from tests.support.service import stored

DECISION = (
    'Sure! Here is my decision:\n```json\n{"intent": "billing", "search_kb": true, '
    '"query": "refund double charge", "open_ticket": true, "ticket_summary": "Double charge"}\n```'
)


class Gate:
    """Holds the model's reply to prompts with `hold` in them until opened."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def wait_here(self, last_line: str) -> None:
        if "hold" in last_line:
            self.reached.set()
            assert self.opened.wait(WAIT)


GATE = Gate()


def model(prompt: str) -> str:  # noqa: PLR0911 - one reply per prompt kind
    """A model server's replies, as chatty as real ones."""
    last = prompt.rstrip().rsplit("\n", 1)[-1]
    GATE.wait_here(last if "hold-decide" in last or last.startswith("Answer") else "")
    if last.startswith("Repair for: support.decide"):
        return DECISION
    if last.startswith("Customer:"):
        if "garbled" in last:
            return "You should contact billing about that."  # no JSON at all
        return DECISION
    if last.startswith("Answer"):
        return '{"answer": "Ticket opened; write to billing@example.com if it is urgent."}'
    if last.startswith("Explain price"):
        final = last.split("final=")[1].split(" ")[0]
        if "inflate" in prompt:
            return '{"notes": "With every discount you pay just 9.99 USD."}'
        return f'{{"notes": "After your discounts the price is {final} USD."}}'
    return '{"answer": "?"}'


@pytest.fixture
def model_server() -> Iterator[OpenAIServer]:
    GATE.reached.clear()
    GATE.opened.clear()
    server = OpenAIServer(replies=model).start()
    yield server
    GATE.opened.set()
    server.stop()


@pytest.fixture
def on_a_model(start_service: Callable[..., Service], model_server: OpenAIServer) -> Service:
    tier = {
        "name": "large",
        "backend": {"kind": "openai", "url": model_server.url, "model": MODEL, "capacity": 4},
    }
    return start_service(inference={"tiers": [tier], "default_tier": "large"})


def test_the_support_agent_decides_and_answers_with_a_model_server(
    on_a_model: Service, model_server: OpenAIServer, nats_server: NatsServer
) -> None:
    _, client = on_a_model
    reply = client.post(
        "/v1/agents/support", json={"user_id": "jane", "message": "charged twice!"}
    ).json()
    assert reply["intent"] == "billing"
    assert reply["ticket_id"].startswith("T-")
    assert reply["references"] == ["https://help.example.com/articles/refund-policy"]
    # The output policy redacted the address the model volunteered.
    assert reply["answer"] == "Ticket opened; write to [redacted] if it is urgent."
    assert len(model_server.requests) == 2
    audited = stored(nats_server.url, "af.audit.>", GenerationAudited)
    assert {(r.backend, r.model) for r in audited} == {("openai", MODEL)}


def test_unusable_model_output_is_repaired_once(
    on_a_model: Service, model_server: OpenAIServer
) -> None:
    _, client = on_a_model
    reply = client.post(
        "/v1/agents/support", json={"user_id": "jane", "message": "garbled request"}
    )
    assert reply.status_code == 200
    prompts = [r["messages"][-1]["content"] for r in model_server.requests]
    assert [p.rstrip().rsplit("\n", 1)[-1].split(":")[0] for p in prompts] == [
        "Customer",
        "Repair for",
        "Answer (intent=billing, ticket=" + reply.json()["ticket_id"] + ")",
    ]


def test_pricing_keeps_a_faithful_explanation_and_replaces_an_invented_figure(
    on_a_model: Service,
) -> None:
    _, client = on_a_model
    body = {
        "type": "PriceRequest",
        "customer_id": "acme",
        "base_price_usd": 100,
        "contract_length_months": 12,
        "discount_code": "SPRING2024",
    }
    kept = client.post("/v1/agents/pricing", json=body).json()
    assert kept["final_price_usd"] == 85.5
    assert kept["notes"] == "After your discounts the price is 85.5 USD."
    replaced = client.post("/v1/agents/pricing", json={**body, "discount_code": "inflate"}).json()
    assert replaced["final_price_usd"] == 90.0
    assert "9.99" not in replaced["notes"]
    assert replaced["notes"].endswith("final price 90 USD.")


def _in_background(
    client: httpx.Client, body: dict[str, str]
) -> tuple[threading.Thread, list[Any]]:
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.append(client.post("/v1/agents/support", json=body))
    )
    thread.start()
    return thread, replies


def test_a_request_in_flight_during_an_erasure_writes_nothing_back(on_a_model: Service) -> None:
    node, client = on_a_model
    state = node.runtime.state
    assert state is not None
    first = client.post("/v1/agents/support", json={"user_id": "jane", "message": "charged twice"})
    conversation = first.json()["conversation_id"]
    body = {"user_id": "jane", "message": "hold on, charged twice", "conversation_id": conversation}
    thread, replies = _in_background(client, body)
    assert GATE.reached.wait(WAIT)  # decided, ticket opened, its answer being written
    report = client.delete("/v1/users/jane/data").json()
    GATE.opened.set()
    thread.join(WAIT)
    assert replies[0].status_code == 200
    assert (report["conversations"], report["tickets"]) == (1, 2)
    assert state.scan(state_key("mem", "jane")) == []  # not written back
    assert state.scan(state_key("auditkey", "index", "jane")) == []


def test_a_request_deciding_during_an_erasure_fails_retryably_and_opens_no_ticket(
    on_a_model: Service,
) -> None:
    node, client = on_a_model
    state = node.runtime.state
    assert state is not None
    thread, replies = _in_background(client, {"user_id": "jane", "message": "hold-decide please"})
    assert GATE.reached.wait(WAIT)  # the model is still deciding
    client.delete("/v1/users/jane/data")
    GATE.opened.set()
    thread.join(WAIT)
    assert replies[0].status_code == 503
    assert "erased while this request ran" in replies[0].json()["detail"]
    assert state.scan(state_key("tickets", "jane")) == []
    assert state.scan("ticket") == []
