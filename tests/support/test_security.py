"""The reference service against a caller with someone else's key: principals at the edge.

Each attack here worked when a key only proved "some caller": with key B
one read the ticket opened under key A, wrote into A's conversations and
erased A's data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import nats.aio.client
import nats.errors
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actors import state_key
from bridges import NatsServer, build_node
from bridges._loop import run_async
from bridges.nats._auth import NODE_USER
from tests.bridges.http_agents import ServedNodes
from tests.conftest import WAIT
from tests.support.conftest import Service
from tests.support.service import support_settings

KEYS = {"AF_KEY_JANE": "jane-secret", "AF_KEY_BOB": "bob-secret", "AF_KEY_WEB": "web-secret"}
KEYS |= {"AF_KEY_OPS": "ops-secret", "AF_TOKEN_SECRET": "a-shared-secret-of-32-bytes-or-more"}
CREDENTIALS = [
    {"name": "jane-app", "key_env": "AF_KEY_JANE", "scope": "user", "user": "jane"},
    {"name": "bob-app", "key_env": "AF_KEY_BOB", "scope": "user", "user": "bob"},
    {"name": "web", "key_env": "AF_KEY_WEB", "scope": "service", "agents": ["support", "tickets"]},
    {"name": "ops", "key_env": "AF_KEY_OPS", "scope": "admin"},
]
ISSUER = "https://login.example.test"
BILLING = "I was charged twice for my March invoice"
BOBS_ORDER = {
    "type": "OrderRequest",
    "customer_id": "bob",
    "base_price_usd": 100.0,
    "contract_length_months": 12,
    "destination": {"country": "DE"},
}


def as_key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(start_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch) -> Service:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    tokens = {"issuer": ISSUER, "secret_env": "AF_TOKEN_SECRET", "algorithms": ["HS256"]}
    return start_service(state="memory", http={"credentials": CREDENTIALS, "tokens": tokens})


def open_ticket(client: httpx.Client, headers: dict[str, str], **body: Any) -> str:
    response = client.post("/v1/agents/support", json={"message": BILLING, **body}, headers=headers)
    assert response.status_code == 200, response.text
    ticket_id = response.json()["ticket_id"]
    assert isinstance(ticket_id, str)
    return ticket_id


def test_key_b_cannot_read_the_ticket_opened_under_key_a(secured: Service) -> None:
    _node, client = secured
    ticket = open_ticket(client, as_key("AF_KEY_JANE"), user_id="jane")
    as_jane = {"user_id": "jane", "ticket_id": ticket}
    naming_jane = client.post("/v1/agents/tickets", json=as_jane, headers=as_key("AF_KEY_BOB"))
    assert naming_jane.status_code == 403
    assert naming_jane.json()["detail"] == "bob-app acts as its own user only"
    as_bob = {"user_id": "bob", "ticket_id": ticket}
    naming_bob = client.post("/v1/agents/tickets", json=as_bob, headers=as_key("AF_KEY_BOB"))
    assert naming_bob.status_code == 404
    own = client.post("/v1/agents/tickets", json=as_jane, headers=as_key("AF_KEY_JANE"))
    assert own.status_code == 200
    assert own.json()["description"] == BILLING


def test_key_b_can_neither_write_into_nor_erase_user_as_data(secured: Service) -> None:
    node, client = secured
    open_ticket(client, as_key("AF_KEY_JANE"), user_id="jane")
    bob = as_key("AF_KEY_BOB")
    hijack = {"user_id": "jane", "message": "please change my email address"}
    assert client.post("/v1/agents/support", json=hijack, headers=bob).status_code == 403
    assert client.delete("/v1/users/jane/data", headers=bob).status_code == 403
    state = node.runtime.state
    assert state is not None
    assert len(state.scan(state_key("mem", "jane"))) == 1  # jane's conversation, untouched
    assert len(state.scan(state_key("tickets", "jane"))) == 1
    # Her own key may erase her data; an admin may erase anyone's.
    assert client.delete("/v1/users/jane/data", headers=as_key("AF_KEY_JANE")).status_code == 200
    open_ticket(client, bob)
    assert client.delete("/v1/users/bob/data", headers=as_key("AF_KEY_OPS")).status_code == 200
    assert state.scan(state_key("tickets", "bob")) == []


def test_a_user_key_that_names_no_user_acts_as_its_own(secured: Service) -> None:
    node, client = secured
    ticket = open_ticket(client, as_key("AF_KEY_BOB"))
    state = node.runtime.state
    assert state is not None
    assert state.scan(state_key("tickets", "bob")) == [state_key("tickets", "bob", ticket)]
    lookup = {"ticket_id": ticket}
    found = client.post("/v1/agents/tickets", json=lookup, headers=as_key("AF_KEY_BOB"))
    assert found.status_code == 200


def test_a_service_key_acts_for_the_users_it_names_on_its_agent_types_only(
    secured: Service,
) -> None:
    _node, client = secured
    web = as_key("AF_KEY_WEB")
    ticket = open_ticket(client, web, user_id="jane")
    lookup = {"user_id": "jane", "ticket_id": ticket}
    assert client.post("/v1/agents/tickets", json=lookup, headers=web).status_code == 200
    # It names the user: with none, the request is malformed, not filled in.
    missing = client.post("/v1/agents/support", json={"message": BILLING}, headers=web)
    assert missing.status_code == 422
    refused = client.delete("/v1/users/jane/data", headers=web)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "web may not call privacy"


def token(*, secret: str = KEYS["AF_TOKEN_SECRET"], **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "actorfleet", "sub": "jane", "iat": now, "exp": now + 60}
    return jwt.encode(body | claims, secret, algorithm="HS256")


def test_a_signed_token_acts_as_its_subject(secured: Service) -> None:
    _node, client = secured
    ticket = open_ticket(client, bearer(token()))
    as_jane = {"user_id": "jane", "ticket_id": ticket}
    assert (
        client.post("/v1/agents/tickets", json=as_jane, headers=bearer(token())).status_code == 200
    )
    as_bob = bearer(token(sub="bob"))
    assert client.post("/v1/agents/tickets", json=as_jane, headers=as_bob).status_code == 403
    admin = bearer(token(sub="ops-console", scope="support actorfleet:admin"))
    assert client.delete("/v1/users/jane/data", headers=admin).status_code == 200


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "the token has expired"),
        ({"aud": "another-service"}, "the token is not valid: Audience doesn't match"),
        ({"iss": "https://evil.example"}, "the token is not valid: Invalid issuer"),
        ({"secret": "not-the-issuers-secret-but-long-enough!"}, "Signature verification failed"),
        ({"sub": "a/b"}, "the token's sub is not a user id"),
    ],
)
def test_a_token_that_is_not_valid_is_401_and_says_why(
    secured: Service, claims: dict[str, Any], reason: str
) -> None:
    _node, client = secured
    response = client.post(
        "/v1/agents/support", json={"message": BILLING}, headers=bearer(token(**claims))
    )
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert (
        response.headers["www-authenticate"] == 'Bearer realm="actorfleet", error="invalid_token"'
    )


def test_an_unsigned_token_is_refused(secured: Service) -> None:
    _node, client = secured
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "actorfleet", "sub": "jane", "exp": now + 60}
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    response = client.post(
        "/v1/agents/support", json={"message": BILLING}, headers=bearer(unsigned)
    )
    assert response.status_code == 401


def test_tokens_signed_with_a_public_key_pair_are_verified_with_the_public_half(
    start_service: Callable[..., Service], tmp_path: Path
) -> None:
    issuer_key = Ed25519PrivateKey.generate()
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        issuer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    tokens = {"issuer": ISSUER, "public_key_file": str(public), "algorithms": ["EdDSA"]}
    _node, client = start_service(state="memory", http={"tokens": tokens})
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "actorfleet", "sub": "jane", "exp": now + 60}
    good = jwt.encode(claims, issuer_key, algorithm="EdDSA")
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    body = {"message": BILLING}
    assert client.post("/v1/agents/support", json=body, headers=bearer(good)).status_code == 200
    assert client.post("/v1/agents/support", json=body, headers=bearer(forged)).status_code == 401


def test_a_user_key_orders_and_reads_shipments_for_its_own_customer_only(
    secured: Service,
) -> None:
    _node, client = secured
    order = BOBS_ORDER
    bob, jane = as_key("AF_KEY_BOB"), as_key("AF_KEY_JANE")
    assert client.post("/v1/agents/pricing", json=order, headers=jane).status_code == 403
    placed = client.post("/v1/agents/pricing", json=order, headers=bob)
    assert placed.status_code == 200, placed.text
    query = {"order_id": placed.json()["order_id"]}
    # The shipment follows by event: wait (bounded) until bob sees it planned.
    deadline = time.monotonic() + WAIT
    while client.post("/v1/agents/shipping", json=query, headers=bob).status_code != 200:
        assert time.monotonic() < deadline, "no shipment was planned"
        time.sleep(0.02)
    refused = client.post("/v1/agents/shipping", json=query, headers=jane)
    assert refused.status_code == 403


def test_a_key_limited_to_some_agent_types_reaches_generation_only_if_it_lists_it(
    secured: Service,
) -> None:
    _node, client = secured
    prompt = {"prompt": "hello", "max_tokens": 4}
    web = as_key("AF_KEY_WEB")  # agents = ["support", "tickets"]
    for path in ("/v1/generate", "/v1/generate/stream"):
        refused = client.post(path, json=prompt, headers=web)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "web may not call generate"
    assert client.post("/v1/generate", json=prompt, headers=as_key("AF_KEY_BOB")).status_code == 200


def test_a_service_names_the_customer_whose_shipment_it_reads(secured: Service) -> None:
    _node, client = secured
    service = bearer(token(sub="web-frontend", scope="actorfleet:service"))
    order = BOBS_ORDER
    placed = client.post("/v1/agents/pricing", json=order, headers=as_key("AF_KEY_BOB"))
    assert placed.status_code == 200, placed.text
    order_id = placed.json()["order_id"]
    deadline = time.monotonic() + WAIT
    query = {"order_id": order_id, "customer_id": "bob"}
    while client.post("/v1/agents/shipping", json=query, headers=service).status_code != 200:
        assert time.monotonic() < deadline, "no shipment was planned"
        time.sleep(0.02)
    as_jane = {"order_id": order_id, "customer_id": "jane"}
    assert client.post("/v1/agents/shipping", json=as_jane, headers=service).status_code == 403


def test_an_open_loopback_edge_refuses_what_a_web_page_could_send(
    start_service: Callable[..., Service],
) -> None:
    _node, client = start_service(state="memory")
    body = {"user_id": "jane", "message": BILLING}
    # A page on another site posting to the loopback port, as a browser would.
    cross_site = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    assert client.post("/v1/agents/support", json=body, headers=cross_site).status_code == 403
    # A DNS-rebound name resolving to 127.0.0.1.
    rebound = {"Host": "evil.example:8000"}
    assert client.post("/v1/agents/support", json=body, headers=rebound).status_code == 403
    local = {"Origin": "http://localhost:8000"}
    assert client.post("/v1/agents/support", json=body, headers=local).status_code == 200
    assert client.post("/v1/agents/support", json=body).status_code == 200


def test_the_service_runs_with_user_keys_a_service_token_and_nats_auth_end_to_end(
    auth_nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every door locked at once: NATS as the confined node user, HTTP by principal."""
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    assert auth_nats_server.users is not None
    node_user = {
        "user": NODE_USER,
        "password_file": str(auth_nats_server.users.password_file(NODE_USER)),
    }
    tokens = {"issuer": ISSUER, "secret_env": "AF_TOKEN_SECRET", "algorithms": ["HS256"]}
    settings = support_settings(
        auth_nats_server.url,
        state={"backend": "kv"},
        nats=node_user,
        http={"credentials": CREDENTIALS, "tokens": tokens},
    )
    served = ServedNodes()
    try:
        node, client = served.start(build_node(settings))
        # A user key opens a ticket; the front end's service token reads it for her.
        ticket = open_ticket(client, as_key("AF_KEY_JANE"))
        service = bearer(token(sub="web-frontend", scope="actorfleet:service"))
        lookup = {"user_id": "jane", "ticket_id": ticket}
        assert client.post("/v1/agents/tickets", json=lookup, headers=service).status_code == 200
        assert (
            client.post("/v1/agents/tickets", json=lookup, headers=as_key("AF_KEY_BOB")).status_code
            == 403
        )
        # Erased by her own key; afterwards nobody reads it.
        assert (
            client.delete("/v1/users/jane/data", headers=as_key("AF_KEY_JANE")).status_code == 200
        )
        assert client.post("/v1/agents/tickets", json=lookup, headers=service).status_code == 404
        assert node.runtime.state is not None
        assert client.get("/readyz").status_code == 200
    finally:
        served.stop_all()

    async def anonymous() -> str:
        nc = nats.aio.client.Client()
        try:
            await nc.connect(auth_nats_server.url, allow_reconnect=False, connect_timeout=1)
        except (nats.errors.Error, OSError) as exc:
            return type(exc).__name__
        finally:
            await nc.close()
        return "connected"

    # Nobody reaches the agents around the edge: NATS refuses a client without credentials.
    assert run_async(anonymous()) != "connected"
