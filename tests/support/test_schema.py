"""The support service's OpenAPI document, checked against the running service by schemathesis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.conftest import Service

pytestmark = pytest.mark.slow

# Bounded: every operation of the service is explored in well under a minute.
EXAMPLES_PER_OPERATION = 25


@pytest.fixture
def support_schema(start_service: Callable[..., Service]) -> Any:
    _, client = start_service(http={"default_timeout": 5.0})
    return schemathesis.openapi.from_url(f"{str(client.base_url).rstrip('/')}/schema/openapi.json")


schema = schemathesis.pytest.from_fixture("support_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_support_operation_answers_as_its_schema_says(case: Any) -> None:
    # As for the framework's own schema test: schema-valid data may still be a
    # documented 4xx (an order for a ticket that is not the caller's, say).
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
