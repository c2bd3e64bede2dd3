"""The HTTP server's own bounds: slow headers, too many connections, requests it cannot parse.

Raw sockets on loopback, since these are things no well-behaved client does.
Every wait is on the server (a response, or the connection closing), bounded
by the socket's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from actors import Runtime
from bridges._held import Held, Resources
from bridges.http import HttpBridge
from bridges.http._health import Health
from bridges.http._metrics import Metrics
from config import decode
from messages import Unavailable
from tests.bridges.http_agents import EchoAgent
from tests.conftest import WAIT

PROBLEM = "application/problem+json"
PARTIAL = b"POST /v1/agents/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"
PING = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# How long a trickling client waits for the server between two bytes.
TRICKLE = 0.01

Response = tuple[int, dict[str, str], bytes]


def connect(client: httpx.Client) -> socket.socket:
    """A raw connection to the server `client` talks to; each read waits at most `WAIT`."""
    return socket.create_connection((client.base_url.host, client.base_url.port), timeout=WAIT)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # closed by a reset: as closed as a FIN
    return b"".join(chunks)


def parse(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def read_response(sock: socket.socket) -> Response:
    """One response (with a Content-Length) on a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    status, headers, body = parse(data)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"] == PROBLEM
    assert headers["connection"] == "close"
    problem: dict[str, Any] = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code)
    return problem


def test_a_connection_that_does_not_finish_its_headers_in_time_gets_408_and_is_closed(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(header_timeout=0.05)
    with connect(client) as sock:
        sock.sendall(PARTIAL)
        problem = assert_problem(parse(read_until_closed(sock)), 408, "timeout")
    assert "http.header_timeout" in problem["detail"]


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(header_timeout=0.05)
    with connect(client) as sock:
        assert_problem(parse(read_until_closed(sock)), 408, "timeout")


def test_trickling_header_bytes_does_not_extend_the_header_deadline(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(header_timeout=0.1)
    started = time.monotonic()
    with connect(client) as sock:
        sock.sendall(PARTIAL)
        # One byte at a time, each well within any per-read timeout, until the server gives up.
        while not select.select([sock], [], [], TRICKLE)[0]:
            assert time.monotonic() - started < WAIT, "the server never closed the connection"
            sock.sendall(b"x")
        assert_problem(parse(read_until_closed(sock)), 408, "timeout")


def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline_too(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(header_timeout=0.05)
    with connect(client) as sock:
        sock.sendall(PING)
        assert read_response(sock)[0] == 200
        sock.sendall(PARTIAL)
        assert_problem(parse(read_until_closed(sock)), 408, "timeout")


def test_a_request_whose_headers_arrived_in_time_may_take_longer_than_the_header_deadline(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(header_timeout=0.02)
    slow = {"type": "Say", "text": "slow", "delay": 0.1}
    first = client.post("/v1/agents/echo", json=slow)
    second = client.post("/v1/agents/echo", json={"type": "Say", "text": "again"})
    assert (first.status_code, second.status_code) == (200, 200)


def test_connections_beyond_max_connections_get_503_and_are_closed(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(max_connections=2)
    with connect(client) as first, connect(client) as second:
        for sock in (first, second):  # both answered, so both counted, and kept alive
            sock.sendall(PING)
            assert read_response(sock)[0] == 200
        with connect(client) as third:
            refused = parse(read_until_closed(third))
        assert_problem(refused, 503, "unavailable")
        assert refused[1]["retry-after"] == "1"
        first.sendall(PING.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert parse(read_until_closed(first))[0] == 200  # closed by the server: a slot is free
        assert client.get("/livez").status_code == 200


UNPARSEABLE = [
    b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n",  # a NUL in a header
    (  # two Content-Lengths
        b"POST /v1/agents/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    ),
    b"GET /livez NOT-HTTP\r\n\r\n",  # a malformed request line
    b"GET /livez HTTP/1.1\r\n\r\n",  # no Host
]


def test_a_request_the_server_cannot_parse_gets_400_problem_and_the_server_goes_on(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    for request in UNPARSEABLE:
        with connect(client) as sock:
            sock.sendall(request)
            assert_problem(parse(read_until_closed(sock)), 400, "bad_request")
        assert client.get("/livez").status_code == 200


def test_a_body_that_stops_coming_gets_408_and_frees_its_connection(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve(header_timeout=0.05, max_connections=2)
    body = b'{"type": "Say", "text": "never finished"}'
    head = (
        b"POST /v1/agents/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connect(client) as sock:
        sock.sendall(head + body[:5])  # headers in time, then the body stalls
        problem = assert_problem(parse(read_until_closed(sock)), 408, "timeout")
    assert "body" in problem["detail"]
    assert client.post("/v1/agents/echo", json={"type": "Say", "text": "next"}).status_code == 200


def _stop_once_handling(node: Any) -> threading.Thread:
    """Stop `node` (as SIGTERM would) once its echo agent has taken a request."""

    def stop() -> None:
        EchoAgent.started.wait(WAIT)
        node.stop()
        node.run(handle_signals=False)

    stopper = threading.Thread(target=stop)
    stopper.start()
    return stopper


@pytest.mark.slow
def test_a_request_in_progress_finishes_within_the_drain_timeout_when_the_node_stops(
    serve: Callable[..., Any],
) -> None:
    node, client = serve(drain_timeout=5.0)
    stopper = _stop_once_handling(node)
    try:
        answer = client.post("/v1/agents/echo", json={"type": "Say", "text": "a", "delay": 0.5})
    finally:
        stopper.join(WAIT)
    assert answer.status_code == 200
    assert answer.json()["text"] == "a"


@pytest.mark.slow
def test_a_request_still_waiting_when_the_drain_runs_out_is_answered_503(
    serve: Callable[..., Any],
) -> None:
    node, client = serve(drain_timeout=0.2)
    stopper = _stop_once_handling(node)
    started = time.monotonic()
    try:
        answer = client.post("/v1/agents/echo", json={"type": "Say", "text": "a", "delay": 1.5})
        took = time.monotonic() - started
    finally:
        stopper.join(WAIT)
    assert took < 1.5  # not when the handler was done
    assert answer.status_code == 503
    assert answer.json()["code"] == "unavailable"
    assert answer.headers["retry-after"] == "1"


async def test_a_generation_still_running_when_the_drain_runs_out_is_answered_unavailable(
    runtime: Runtime,
) -> None:
    bridge = HttpBridge(
        runtime,
        decode({"http": {"drain_timeout": 0.01}}).http,
        [],
        health=Health(
            "n",
            lambda: None,  # type: ignore[arg-type,return-value]
            needs_inference=False,
            needs_nats=False,
            nats=Held("the NATS bridge"),
            pool=Held("the inference pool"),
            resources=Resources(),
        ),
        metrics=Metrics(),
        pool=Held("the inference pool"),
    )
    generation = asyncio.ensure_future(asyncio.sleep(60))  # a task, as the pool's submit is
    answer = bridge.in_flight(generation)
    await bridge.close()
    assert isinstance(answer.exception(), Unavailable)
    with contextlib.suppress(asyncio.CancelledError):
        await generation
    assert generation.cancelled()  # its slot is freed
