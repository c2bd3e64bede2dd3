"""The HTTP edge: agents as JSON endpoints, typed errors, deadlines, keys, OpenAPI."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bridges.http._auth import Authenticator
from config import decode
from tests.bridges.http_agents import EchoAgent
from tests.conftest import WAIT

PROBLEM = "application/problem+json"
JSON = "application/json"


def test_an_agent_answers_a_json_request(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.post("/v1/agents/echo", json={"type": "Say", "text": "hi"})
    assert response.status_code == 200
    assert response.json() == {"type": "Said", "text": "hi", "handled_by": "echo/0"}


def test_an_agent_with_one_request_type_needs_no_type_tag(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.post("/v1/agents/ping", json={"payload": "x"})
    assert response.status_code == 200
    assert response.json()["payload"] == "x"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("bad_request", 400),
        ("forbidden", 403),
        ("not_found", 404),
        ("overloaded", 429),
        ("timeout", 504),
        ("unavailable", 503),
        ("crash", 500),
    ],
)
def test_typed_errors_become_problem_json_with_their_status(
    serve: Callable[..., Any], code: str, status: int
) -> None:
    _node, client = serve()
    response = client.post("/v1/agents/echo", json={"type": "FailWith", "code": code})
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["status"], body["code"]) == (status, "internal" if code == "crash" else code)
    if code == "overloaded":
        assert response.headers["retry-after"] == "3"
        assert body["retry_after"] == 2.5
    if code == "crash":
        assert "passwd" not in response.text
        assert "RuntimeError" not in response.text
        assert "Traceback" not in response.text


def test_bad_bodies_and_headers_get_client_errors(serve: Callable[..., Any]) -> None:
    _node, client = serve(max_body=2048)
    cases = [
        (client.post("/v1/agents/echo", content=b"{not json"), 400),
        (client.post("/v1/agents/echo", json={"type": "Say", "text": 3}), 422),
        (client.post("/v1/agents/echo", json={"type": "Nope"}), 422),
        (client.post("/v1/agents/echo", json={"type": "Say", "text": "x" * 4096}), 413),
        (client.post("/v1/agents/nobody", json={}), 404),
        (
            client.post(
                "/v1/agents/echo",
                json={"type": "Say", "text": "x"},
                headers={"X-Request-Timeout": "-1"},
            ),
            400,
        ),
        (
            client.post(
                "/v1/agents/echo",
                json={"type": "Say", "text": "x"},
                headers={"X-Priority": "urgent"},
            ),
            400,
        ),
        (
            client.post(
                "/v1/agents/echo",
                json={"type": "Say", "text": "x"},
                headers={"X-Request-Id": "bad id!"},
            ),
            400,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == status
    assert EchoAgent.handled == []


def test_the_deadline_comes_from_the_request_timeout_header(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.post(
        "/v1/agents/echo",
        json={"type": "Say", "text": "slow", "delay": 1.0},
        headers={"X-Request-Timeout": "0.1"},
    )
    assert response.status_code == 504
    assert response.json()["code"] == "timeout"


def test_a_client_that_goes_away_cancels_its_queued_request(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    busy = threading.Thread(
        target=client.post,
        args=("/v1/agents/echo",),
        kwargs={"json": {"type": "Say", "text": "first", "delay": 0.5}},
    )
    busy.start()
    assert EchoAgent.started.wait(WAIT)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        client.post("/v1/agents/echo", json={"type": "Say", "text": "abandoned"}, timeout=0.1)
    busy.join(WAIT)
    after = client.post("/v1/agents/echo", json={"type": "Say", "text": "after"})
    assert after.status_code == 200
    assert EchoAgent.handled == ["first", "after"]


def test_api_keys_are_required_when_configured(serve: Callable[..., Any]) -> None:
    _node, client = serve(api_keys=["k-1", "k-2"])
    ping = {"payload": "x"}
    missing = client.post("/v1/agents/ping", json=ping)
    wrong = client.post("/v1/agents/ping", json=ping, headers={"X-API-Key": "nope"})
    bearer = client.post("/v1/agents/ping", json=ping, headers={"Authorization": "Bearer k-2"})
    header = client.post("/v1/agents/ping", json=ping, headers={"X-API-Key": "k-1"})
    # RFC 6750: a missing or a wrong credential is 401; 403 is for a valid one.
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["content-type"] == PROBLEM
    assert missing.headers["www-authenticate"] == 'Bearer realm="actorfleet"'
    assert wrong.headers["www-authenticate"] == 'Bearer realm="actorfleet", error="invalid_token"'
    assert (bearer.status_code, header.status_code) == (200, 200)
    assert client.get("/livez").status_code == 200  # probes need no key


def test_a_non_loopback_address_without_api_keys_is_refused_at_load() -> None:
    from messages import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match=r"http\.credentials"):
        decode({"http": {"enabled": True, "host": "0.0.0.0"}})  # noqa: S104


def test_the_openapi_document_describes_each_agent_from_its_types(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    spec = client.get("/schema/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    echo = spec["paths"]["/v1/agents/echo"]["post"]
    body = echo["requestBody"]["content"]["application/json"]["schema"]
    assert {ref["$ref"] for ref in body["oneOf"]} == {
        "#/components/schemas/Say",
        "#/components/schemas/FailWith",
    }
    assert echo["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Said"
    }
    assert "429" in echo["responses"]
    assert spec["components"]["schemas"]["Say"]["properties"]["delay"]["maximum"] == 5
    assert "/v1/generate" in spec["paths"]


UNREADABLE_BODIES = [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"type": "Say", "text": "\xff"}', "not valid UTF-8"),
]


def test_bodies_the_json_decoder_cannot_read_are_bad_requests_not_failures(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    _node, client = serve()
    paths = ["/v1/agents/echo", "/v1/agents/story/stream", "/v1/generate", "/v1/generate/stream"]
    with caplog.at_level(logging.WARNING):
        for path in paths:
            for body, why in UNREADABLE_BODIES:
                response = client.post(path, content=body, headers={"content-type": JSON})
                assert response.status_code == 400, (path, response.text)
                assert response.headers["content-type"] == PROBLEM
                assert response.json()["code"] == "bad_request"
                assert why in response.json()["detail"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_request_timeout_header_takes_only_plain_decimal_seconds(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    ping = {"payload": "x"}
    for value in ["1_0", "1e1", "+5", ".5", "5.", "nan", "inf", "0x10"]:
        response = client.post("/v1/agents/ping", json=ping, headers={"X-Request-Timeout": value})
        assert (response.status_code, response.json()["detail"]) == (
            400,
            f"X-Request-Timeout must be a plain decimal number, not {value!r}",
        )
    over = client.post("/v1/agents/ping", json=ping, headers={"X-Request-Timeout": "300.5"})
    assert over.json()["detail"] == "X-Request-Timeout must be seconds in (0, 300], not 300.5"
    for good in ("2", "0.5", "300"):
        answered = client.post("/v1/agents/ping", json=ping, headers={"X-Request-Timeout": good})
        assert answered.status_code == 200


def test_a_bad_request_id_header_is_refused_naming_the_header_and_the_value(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    for value in ["bad id!", "x" * 129, "a/b", "caf\xe9"]:
        headers = {"X-Request-Id": value.encode("latin-1")}
        response = client.post("/v1/agents/ping", json={"payload": "x"}, headers=headers)
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert detail.startswith("X-Request-Id must be 1-128 letters, digits or . _ : -, not ")
        assert value[:32] in detail
    fine = client.post(
        "/v1/agents/ping", json={"payload": "x"}, headers={"X-Request-Id": "a.B_1:-"}
    )
    assert fine.status_code == 200


@pytest.mark.parametrize("header", ["X-Request-Timeout", "X-Priority", "X-Request-Id"])
def test_a_metadata_header_sent_twice_is_a_bad_request_not_first_one_wins(
    serve: Callable[..., Any], header: str
) -> None:
    _, client = serve()
    first, second = {
        "X-Request-Timeout": ("0.001", "30"),
        "X-Priority": ("critical", "sheddable"),
        "X-Request-Id": ("a-1", "a-2"),
    }[header]
    response = client.post(
        "/v1/agents/echo",
        json={"type": "Say", "text": "x"},
        headers=[(header, first), (header, second)],
    )
    assert response.status_code == 400
    assert header in response.json()["detail"]


def test_an_unknown_agent_type_is_404_naming_the_types_there_are(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    response = client.post("/v1/agents/nosuch", json={})
    assert response.status_code == 404
    assert response.json()["detail"].startswith("no agent type 'nosuch' here; agent types: ")
    assert "echo" in response.json()["detail"]
    streamed = client.post("/v1/agents/echo/stream", json={"type": "Say", "text": "x"})
    assert streamed.status_code == 404
    assert streamed.json()["detail"] == (
        "echo does not stream its replies (POST /v1/agents/echo); agent types that stream: story"
    )
    assert "/v1/agents/{agent_type}" not in client.get("/schema/openapi.json").json()["paths"]


def test_a_body_without_its_type_tag_is_told_the_tags_there_are(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    for body in ({"text": "x"}, {"type": "Shout", "text": "x"}):
        response = client.post("/v1/agents/echo", json=body)
        assert response.status_code == 422
        assert response.json()["detail"].endswith('"type" must be one of Say, FailWith')


def test_authentication_runs_on_the_loop_not_a_worker_thread(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Litestar runs a plain-function guard on a worker thread: a hop per request.
    key = "loop-guard-key-0123456789abcdef"
    digest = hashlib.sha256(key.encode()).hexdigest()
    _node, client = serve(credentials=[{"name": "ops", "key_sha256": digest, "scope": "admin"}])
    threads: list[str] = []
    authenticate = Authenticator.authenticate

    def recorded(self: Authenticator, headers: Any) -> Any:
        threads.append(threading.current_thread().name)
        return authenticate(self, headers)

    monkeypatch.setattr(Authenticator, "authenticate", recorded)
    answer = client.post("/v1/agents/ping", json={}, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    assert threads == ["actorfleet-io-web"]  # the node's loop thread
