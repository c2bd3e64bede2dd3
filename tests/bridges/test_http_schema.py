"""The served OpenAPI document and the server agree: what it calls valid is accepted.

Checked by hand for the rules the msgspec types alone do not say (a union's
`type` tag, exactly one of `prompt` and `messages`, the backends' number
ranges), then explored by schemathesis (slow).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bridges import build_node
from config import decode
from tests.bridges.http_agents import base_url

# Bounded: the whole API is explored in a few seconds on a small machine.
EXAMPLES_PER_OPERATION = 40
# Larger than any max_tokens plus prompt the document allows, so that no
# schema-valid generation is refused for the model's context.
CONTEXT = 1 << 22
HTTP_INTERNAL = 500
CHAT = [{"role": "user", "content": "hi"}]


def body_validator(client: httpx.Client, path: str) -> Draft202012Validator:
    """A validator of `path`'s request body, by the document the server serves."""
    spec = client.get("/schema/openapi.json").json()
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**body, "components": spec["components"]})


def test_a_union_of_request_types_requires_the_type_tag_as_the_server_does(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    echo = body_validator(client, "/v1/agents/echo")
    untagged = {"text": "hi"}  # fits Say alone, yet only the tag says what it is
    assert not echo.is_valid(untagged)
    assert client.post("/v1/agents/echo", json=untagged).status_code == 422
    assert echo.is_valid({"type": "Say", "text": "hi"})
    assert echo.schema["discriminator"] == {
        "propertyName": "type",
        "mapping": {
            "Say": "#/components/schemas/Say",
            "FailWith": "#/components/schemas/FailWith",
        },
    }
    ping = body_validator(client, "/v1/agents/ping")  # one request type: the tag is optional
    assert ping.is_valid({"payload": "x"})
    assert client.post("/v1/agents/ping", json={"payload": "x"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/generate/stream"])
def test_the_document_asks_for_exactly_one_of_prompt_and_messages_as_the_server_does(
    serve: Callable[..., Any], path: str
) -> None:
    _node, client = serve()
    document = body_validator(client, path)
    refused: list[dict[str, Any]] = [
        {},
        {"prompt": None, "messages": []},
        {"messages": []},
        {"prompt": " \t\n\u3000\x1c"},
        {"prompt": "hi", "messages": CHAT},
    ]
    accepted: list[dict[str, Any]] = [
        {"prompt": "hi"},
        {"prompt": "hi", "messages": None},
        {"messages": CHAT},
        {"prompt": None, "messages": [{"role": "", "content": ""}]},
        {"prompt": "\ufeff"},  # not blank to Python, whatever ECMA-262 calls it
    ]
    for body in refused:
        assert not document.is_valid(body), body
        assert client.post(path, json=body).status_code == 400, body
    for body in accepted:
        assert document.is_valid(body), body
        assert client.post(path, json={**body, "max_tokens": 1}).status_code == 200, body


def test_a_body_is_decoded_strictly_as_the_document_says_not_converted(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    document = body_validator(client, "/v1/generate")
    for loose in ({"may_degrade": 0}, {"max_tokens": "5"}, {"sampling": {"temperature": "0"}}):
        body = {"prompt": "hi", **loose}
        assert not document.is_valid(body), body
        refused = client.post("/v1/generate", json=body)
        assert (refused.status_code, refused.json()["code"]) == (422, "bad_request"), body
    whole = {
        "prompt": "hi",
        "max_tokens": 2.0,
        "sampling": {"top_k": 1e1},
    }  # integers, to JSON Schema
    assert document.is_valid(whole)
    assert client.post("/v1/generate", json=whole).status_code == 200
    wrong = client.post("/v1/agents/echo", json={"type": "Say", "text": "hi", "delay": "1"})
    assert wrong.status_code == 422
    assert wrong.json()["detail"] == "Expected `float`, got `str` - at `$.delay`"


def test_numbers_the_backends_cannot_take_are_outside_the_document(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    document = body_validator(client, "/v1/generate")
    for outside in (
        {"seed": -1},
        {"seed": 1 << 63},
        {"seed": 1 << 64},
        {"sampling": {"top_k": 1 << 31}},
    ):
        body = {"prompt": "hi", "max_tokens": 1, **outside}
        assert not document.is_valid(body), body
        assert client.post("/v1/generate", json=body).status_code in {400, 422}, body
    for inside in ({"seed": 0}, {"seed": (1 << 63) - 1}, {"sampling": {"top_k": (1 << 31) - 1}}):
        body = {"prompt": "hi", "max_tokens": 1, **inside}
        assert document.is_valid(body), body
        assert client.post("/v1/generate", json=body).status_code == 200, body


@pytest.fixture
def api_schema() -> Iterator[Any]:
    raw = {
        "node": {"name": "schema"},
        "nats": {"enabled": False},
        "http": {"enabled": True, "port": 0, "default_timeout": 2.0},
        "pools": [{"agent": "actors:PingAgent", "size": 2}],
        "inference": {
            "tiers": [
                {
                    "name": "large",
                    "backend": {
                        "kind": "scripted",
                        "model": "scripted",
                        "capacity": 4,
                        "context_length": CONTEXT,
                    },
                }
            ]
        },
    }
    node = build_node(decode(raw))
    node.start()
    try:
        yield schemathesis.openapi.from_url(f"{base_url(node)}/schema/openapi.json")
    finally:
        node.stop()
        node.run(handle_signals=False)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_answers_as_its_schema_says_and_never_fails_inside(case: Any) -> None:
    # Every check, "schema-valid data is accepted" included: an unknown tier is
    # a 404, which that check allows, and the tier's context is larger than
    # any request the document allows. But for a generation carrying an output
    # schema: its text must be a JSON Schema object, which the document
    # (a bounded string) cannot say; anything else there is a typed 400.
    body = case.body if isinstance(case.body, dict) else {}
    if body.get("output") is None:
        case.call_and_validate()
        return
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < HTTP_INTERNAL, response.text


def test_the_api_page_loads_everything_from_the_node_itself(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    page = client.get("/schema")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/schema/assets/"), asset  # nothing from a CDN
        assert client.get(asset).status_code == 200
    docs = client.get("/docs", follow_redirects=False)
    assert (docs.status_code, docs.headers["location"]) == (302, "/schema/swagger")
    assert client.get("/schema/openapi.yaml").status_code == 200
