"""One bad input must not take the node down or act: long ids, untagged bodies."""

from __future__ import annotations

from collections.abc import Callable

import nats
import pytest

from actors.support import SupportRequest
from bridges import NatsServer
from bridges._loop import run_async
from bridges.nats._wire import decode_reply
from messages import BadRequest, encode
from tests.conftest import WAIT
from tests.support.conftest import Service
from tests.support.service import order_created_fields

LONG = "x" * 5000
BILLING = {"user_id": "jane", "message": "I was charged twice for my March invoice"}


async def _request(url: str, body: bytes, headers: dict[str, str] | None) -> tuple[bytes, dict]:
    nc = await nats.connect(url)
    try:
        msg = await nc.request("af.agent.support", body, timeout=5, headers=headers)
        return msg.data, msg.headers or {}
    finally:
        await nc.close()


def _assert_serving(service: Service) -> None:
    _, client = service
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    reply = client.post("/v1/agents/support", json=BILLING)
    assert reply.status_code == 200, reply.text
    assert client.get("/healthz").json()["status"] != "fail"


@pytest.mark.parametrize("backend", ["kv", "redis"])
def test_a_5000_character_id_header_is_refused_and_the_node_keeps_serving(
    start_service: Callable[..., Service], nats_server: NatsServer, backend: str
) -> None:
    service = start_service(state=backend)
    body = encode(SupportRequest(user_id="jane", message="I was charged twice"))
    data, headers = run_async(_request(nats_server.url, body, {"Af-Id": LONG}))
    with pytest.raises(BadRequest, match="Af-Id"):
        decode_reply(data, headers)
    _assert_serving(service)


def test_a_5000_character_envelope_id_is_refused_and_the_node_keeps_serving(
    start_service: Callable[..., Service], nats_server: NatsServer
) -> None:
    service = start_service(state="kv")
    request = SupportRequest(user_id="jane", message="I was charged twice")
    envelope = encode((1, LONG, 4e9, None, "default", None, None, None, request))
    data, headers = run_async(_request(nats_server.url, envelope, None))
    with pytest.raises(BadRequest):
        decode_reply(data, headers)
    _assert_serving(service)


async def _publish_and_see_dead_letter(url: str, body: bytes) -> dict[str, str]:
    nc = await nats.connect(url)
    try:
        dead = await nc.subscribe("af.dlq.OrderCreated")
        await nc.jetstream().publish(
            "af.evt.OrderCreated", body, headers={"Nats-Msg-Id": "long-order-1"}
        )
        msg = await dead.next_msg(timeout=WAIT)
        return msg.headers or {}
    finally:
        await nc.close()


def test_an_event_with_a_5000_character_order_id_is_dead_lettered_and_the_node_keeps_serving(
    start_service: Callable[..., Service], nats_server: NatsServer
) -> None:
    service = start_service(state="kv")
    raw = order_created_fields()
    raw["order_id"] = LONG
    headers = run_async(_publish_and_see_dead_letter(nats_server.url, encode(raw)))
    assert headers["Af-Error-Code"] == "bad_request"
    _assert_serving(service)


async def _ask_raw(url: str, subject: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, body, timeout=5)
        return msg.data, msg.headers or {}
    finally:
        await nc.close()


def test_an_untagged_erasure_body_over_nats_is_refused_and_erases_nothing(
    start_service: Callable[..., Service], nats_server: NatsServer
) -> None:
    _, client = start_service(state="kv")
    opened = client.post("/v1/agents/support", json=BILLING).json()
    data, headers = run_async(
        _ask_raw(nats_server.url, "af.agent.privacy", encode({"user_id": "jane"}))
    )
    with pytest.raises(BadRequest, match="type"):
        decode_reply(data, headers)
    ticket = client.post(
        "/v1/agents/tickets", json={"user_id": "jane", "ticket_id": opened["ticket_id"]}
    )
    assert ticket.json()["description"] == BILLING["message"]
