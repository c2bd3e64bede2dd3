"""The same agents on a model server (OpenAI-compatible, on loopback), not the scripted rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bridges import NatsServer
from messages import GenerationAudited
from tests.inference.openai_server import MODEL, OpenAIServer
from tests.support.conftest import Service
from tests.support.service import stored

DECISION = (
    'Sure! Here is my decision:\n```json\n{"intent": "billing", "search_kb": true, '
    '"query": "refund double charge", "open_ticket": true, "ticket_summary": "Double charge"}\n```'
)


def model(prompt: str) -> str:  # noqa: PLR0911 - one reply per prompt kind
    """A model server's replies, as chatty as real ones."""
    last = prompt.rstrip().rsplit("\n", 1)[-1]
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
    server = OpenAIServer(replies=model).start()
    yield server
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
