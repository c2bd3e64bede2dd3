from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from bridges import NatsServer
from bridges.node._build import build_node
from supervisors import Node
from tests.bridges.http_agents import ServedNodes
from tests.conftest import redis_url
from tests.support.service import support_settings

Service = tuple[Node, httpx.Client]


@pytest.fixture
def start_service(nats_server: NatsServer) -> Iterator[Callable[..., Service]]:
    """Start the reference service's node (embedded defaults) on the test NATS."""
    served = ServedNodes()

    prefix = f"af-test-{nats_server.port}:"
    used_redis = False

    def start(*, state: str = "kv", redis_at: str | None = None, **sections: Any) -> Service:
        nonlocal used_redis
        used_redis = used_redis or (state == "redis" and redis_at is None)
        at = redis_at or redis_url()
        extra = {"redis_url": at, "redis_prefix": prefix} if state == "redis" else {}
        settings = support_settings(nats_server.url, state={"backend": state, **extra}, **sections)
        return served.start(build_node(settings))

    yield start
    served.stop_all()
    if used_redis:
        client = redis.Redis.from_url(redis_url())
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture(params=["kv", "redis", "memory"])
def service(request: pytest.FixtureRequest, start_service: Callable[..., Service]) -> Service:
    """The service with its state on JetStream KV, on Redis, then in memory."""
    return start_service(state=request.param)
