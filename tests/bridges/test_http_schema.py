"""The served OpenAPI document, checked against the running server by schemathesis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bridges import build_node
from config import decode
from tests.bridges.http_agents import base_url

pytestmark = pytest.mark.slow

# Bounded: the whole API is explored in a few seconds on a small machine.
EXAMPLES_PER_OPERATION = 40


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
                    "backend": {"kind": "scripted", "model": "scripted", "capacity": 4},
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


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_answers_as_its_schema_says_and_never_fails_inside(case: Any) -> None:
    # Every check but "schema-valid data is accepted": a request can match the
    # JSON Schema and still be a documented 400 (an empty prompt, more tokens
    # than the model's context, an unknown tier), which the schema cannot say.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
