"""Random ids, lengths and bytes at every edge of a support node: typed answers, node serving.

Each test starts one node (state on JetStream KV) and drives hypothesis
examples through it: HTTP headers and JSON bodies, NATS request headers,
bodies and envelopes, and the fields and headers of `OrderCreated` events.
After every example the node must still be ready, not failing its health
checks, and answer a known-good support request. The default run keeps a
few examples of each edge in one test; the `slow` tests run many more, one
edge each.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import msgspec
import nats
import nats.js.errors
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.support import ShipmentPlanned, SupportRequest
from bridges import IoLoop, NatsServer
from bridges.nats._bridge import NatsBridge
from bridges.nats._events import Outcome
from bridges.nats._serving import headers_size
from bridges.nats._wire import (
    CORRELATION_ID,
    DEADLINE,
    ERROR_CODE,
    ID,
    MSG_ID,
    PRIORITY,
    SENDER,
    STREAM_HEADER,
    TRACEPARENT,
    TRACESTATE,
    decode_reply,
)
from messages import AgentError, InternalError, decode, encode
from tests.conftest import WAIT
from tests.support.conftest import Service
from tests.support.service import order_created_fields

BILLING: Final = {"user_id": "jane", "message": "I was charged twice for my March invoice"}
SUPPORT: Final = "/v1/agents/support"
TICKETS: Final = "/v1/agents/tickets"
AGENT_SUBJECT: Final = "af.agent.support"
EVENT_SUBJECT: Final = "af.evt.OrderCreated"
DEAD_LETTERS: Final = "af.dlq.OrderCreated"
PLANNED: Final = "af.evt.ShipmentPlanned"
PROBE: Final = "X-Probe"
# 504 is the documented answer to a deadline (a tiny X-Request-Timeout) that passes.
TYPED_STATUSES: Final = frozenset({200, 400, 404, 413, 422, 429, 503, 504})
PROBLEM_JSON: Final = "application/problem+json"
FAST_EXAMPLES: Final = 8
SLOW_EXAMPLES: Final = 40
LONGEST_HEADER: Final = 10_000
LONGEST_ID: Final = 5000
OVER_MAX_BODY: Final = 1_100_000  # http.max_body is 1 MiB
VALID_TRACEPARENT: Final = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- strategies -----------------------------------------------------------------


class FromNow(float):
    """A deadline this many seconds after the moment the input is sent (drawn, then rendered)."""

    def __repr__(self) -> str:
        return f"FromNow({float(self)!r})"

    def at(self) -> float:
        return time.time() + self


def _rendered(value: Any) -> Any:
    """`value` with every `FromNow` turned into an absolute deadline (header text or number)."""
    if isinstance(value, FromNow):
        return value.at()
    if isinstance(value, list):
        return [_rendered(v) for v in value]
    if isinstance(value, dict):
        return {k: repr(v.at()) if isinstance(v, FromNow) else v for k, v in value.items()}
    return value


def _repeated(chunk: str, length: int) -> str:
    """`chunk` repeated to exactly `length` characters (long values, cheap to draw)."""
    return (chunk * length)[:length]


_controls = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    "\x7f\x85\u2028\u2029\ufeff"
)
_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# Any text: printable, any unicode, control characters, very long.
texts = st.one_of(
    st.text(_printable, max_size=64),
    st.text(max_size=64),
    st.text(_controls | _printable, max_size=32),
    st.builds(_repeated, st.text(min_size=1, max_size=4), st.integers(129, LONGEST_HEADER)),
)
# Values near what each field accepts, so that inputs get past the first check.
near_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,140}", fullmatch=True)
near_senders = st.from_regex(r"[A-Za-z0-9._:/@-]{1,130}", fullmatch=True)
near_priorities = st.sampled_from(["critical", "default", "sheddable", "Critical", "urgent", ""])
near_numbers = st.one_of(
    st.floats(-1, 400).map(lambda f: f"{f:.6f}"),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["0", "-1", "0.000001", "30", "300", "301", "1e3", "inf", "nan", "+5", "1_0"]),
)
near_deadlines = st.one_of(
    st.floats(-2, 3).map(FromNow),
    st.sampled_from(["1", "1733150000.25", "4000000000", "99999999999999999999"]),
    near_numbers,
)
near_traceparents = st.just(VALID_TRACEPARENT) | (
    st.from_regex(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True)
)
near_tracestates = st.one_of(
    st.from_regex(r"[a-z]{1,8}=[a-z0-9]{1,16}(,[a-z]{1,8}=[a-z0-9]{1,16}){0,3}", fullmatch=True),
    st.builds(_repeated, st.just("k=v,"), st.integers(500, 600)),
)


def _h11_safe(value: str) -> bytes:
    """`value` as UTF-8, as h11 lets a client send it: no NUL, CR, LF, VT, FF; no outer blanks.

    Every other control character goes through to the server.
    """
    raw = value.encode()
    for byte in b"\x00\r\n\x0b\x0c":
        raw = raw.replace(bytes([byte]), b"?")
    return raw.strip(b" \t")


HTTP_HEADERS: Final = {
    "X-Request-Id": near_ids,
    "X-Request-Timeout": near_numbers,
    "X-Priority": near_priorities,
    TRACEPARENT: near_traceparents,
    TRACESTATE: near_tracestates,
}
_http_header = st.sampled_from(sorted(HTTP_HEADERS)).flatmap(
    lambda name: st.tuples(st.just(name.encode()), (HTTP_HEADERS[name] | texts).map(_h11_safe))
)
# A list, not a dict: a header may come twice.
http_headers = st.lists(_http_header, max_size=6)

ids = st.one_of(
    near_ids,
    st.text(max_size=40),
    st.text(_controls | _printable, max_size=20),
    st.builds(_repeated, st.text(min_size=1, max_size=4), st.integers(0, LONGEST_ID)),
)
# JSON that no encoder writes from a str: lone surrogates, NUL escapes, bytes that are not UTF-8.
_raw_json_strings = st.sampled_from(
    [b'"\\ud800"', b'"\\udc00x"', b'"a\\u0000b"', b'"\\ud83d\\ude00"', b'"\xff\xfe"', b'"\xc3"']
)
http_bodies = st.one_of(
    st.fixed_dictionaries(
        {"user_id": ids, "message": st.just(BILLING["message"])},
        optional={"conversation_id": ids},
    ).map(lambda body: (SUPPORT, msgspec.json.encode(body))),
    st.fixed_dictionaries({"user_id": ids, "ticket_id": ids}).map(
        lambda body: (TICKETS, msgspec.json.encode(body))
    ),
    _raw_json_strings.map(lambda raw: (TICKETS, b'{"user_id": "jane", "ticket_id": %b}' % raw)),
    st.just((TICKETS, b'{"user_id": "jane", "ticket_id": "%b"}' % (b"T" * OVER_MAX_BODY))),
    _raw_json_strings.map(
        lambda raw: (SUPPORT, b'{"user_id": %b, "message": "I was charged twice"}' % raw)
    ),
)


def _no_newline(value: Any) -> bool:
    return not isinstance(value, str) or ("\r" not in value and "\n" not in value)


# NATS header values cannot hold CR or LF (nats-py would turn them into blanks).
NATS_HEADERS: Final = {
    ID: near_ids,
    MSG_ID: near_ids,
    DEADLINE: near_deadlines,
    CORRELATION_ID: near_ids,
    PRIORITY: near_priorities,
    SENDER: near_senders,
    TRACEPARENT: near_traceparents,
    TRACESTATE: near_tracestates,
    STREAM_HEADER: st.just("1"),
}
nats_headers = st.fixed_dictionaries(
    {},
    optional={name: (near | texts).filter(_no_newline) for name, near in NATS_HEADERS.items()},
).filter(bool)

_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=12,
)
_support_dicts = st.fixed_dictionaries(
    {"type": st.just("SupportRequest"), "user_id": ids, "message": st.just(BILLING["message"])},
    optional={"conversation_id": ids | st.none()},
)
_anything = ids | texts | st.none() | _msgpack_values
# `[1, id, deadline, correlation_id, priority, sender, traceparent, tracestate, message]`
envelopes = st.tuples(
    st.sampled_from([1, 1, 1, 0, 2, -1]) | st.integers(-(2**63), 2**64 - 1),
    near_ids | _anything,
    st.floats(-2, 3).map(FromNow)
    | st.floats()
    | st.sampled_from([4e9, 1.0, 0.0])
    | st.integers(-(2**63), 2**63)
    | _anything,
    st.none() | near_ids | _anything,
    st.sampled_from(["default", "critical", "sheddable"]) | _anything,
    st.none() | near_senders | _anything,
    st.none() | near_traceparents | _anything,
    st.none() | near_tracestates | _anything,
    _support_dicts | _msgpack_values,
).map(list)


def _with(fields: list[Any], index: int, value: Any) -> list[Any]:
    return [value if i == index else f for i, f in enumerate(fields)]


# A valid envelope with one field replaced: gets past every check but one.
_good_envelopes = st.tuples(
    st.just(1),
    near_ids,
    st.floats(0.5, 3).map(FromNow) | st.just(4e9),
    st.none() | near_ids,
    st.sampled_from(["default", "critical", "sheddable"]),
    st.none() | near_senders,
    st.none() | near_traceparents,
    st.none() | near_tracestates,
    _support_dicts,
).map(list)
one_field_off = st.builds(_with, _good_envelopes, st.integers(0, 8), _anything)
nats_bodies = st.one_of(
    _good_envelopes,
    one_field_off,
    envelopes,
    _support_dicts.map(encode),
    _msgpack_values.map(encode),
    st.binary(max_size=512),
    st.just(b""),
)


class Filling(int):
    """An order id that makes the event this many bytes short of the server's `max_payload`."""

    def __repr__(self) -> str:
        return f"Filling({int(self)})"


_order_fields = st.fixed_dictionaries(
    {"order_id": ids | st.integers(0, 2048).map(Filling), "customer_id": ids},
    optional={
        "total_usd": st.floats(),
        "weight_kg": st.floats(),
        "destination": st.fixed_dictionaries(
            {"country": st.sampled_from(["DE", "US", "SE"]) | st.text(max_size=3)}
        ),
    },
)
EVENT_HEADERS: Final = {
    # Holds for the event's own publish; must not go with its dead letter.
    "Nats-Expected-Stream": st.just("AF_EVENTS"),
    ID: near_ids,
    CORRELATION_ID: near_ids,
    SENDER: near_senders,
    TRACEPARENT: near_traceparents,
    TRACESTATE: near_tracestates,
}
event_headers = st.fixed_dictionaries(
    {},
    optional={
        name: near if name.startswith("Nats-") else (near | texts).filter(_no_newline)
        for name, near in EVENT_HEADERS.items()
    },
)
# The dedup id: fresh (the event is stored), or random text (maybe a duplicate, or invalid).
event_ids = st.none() | texts.filter(_no_newline)


# --- the node's edges ---------------------------------------------------------------


class Settled:
    """What the node's event router settled, by stream sequence, waited on with a bound."""

    def __init__(self) -> None:
        self._outcomes: dict[int, Outcome] = {}
        self._cond = threading.Condition()

    def __call__(self, subject: str, sequence: int, outcome: Outcome) -> None:
        if subject == EVENT_SUBJECT:
            with self._cond:
                self._outcomes[sequence] = outcome
                self._cond.notify_all()

    def wait(self, sequence: int) -> Outcome:
        with self._cond:
            settled = self._cond.wait_for(lambda: sequence in self._outcomes, WAIT)
            assert settled, f"event {sequence} was not settled within {WAIT} s"
            return self._outcomes[sequence]


@dataclass
class Edges:
    """One running support node and clients of each of its edges."""

    http: httpx.Client
    io: IoLoop
    nc: Client
    settled: Settled
    dead: Subscription
    planned: Subscription
    planned_orders: set[str] = field(default_factory=set)

    def request(self, body: bytes, headers: dict[str, str] | None) -> Msg:
        return self.io.run(
            self.nc.request(AGENT_SUBJECT, body, timeout=WAIT, headers=headers), timeout=WAIT + 1
        )


@pytest.fixture
def edges(
    start_service: Callable[..., Service], nats_server: NatsServer, io: IoLoop
) -> Iterator[Edges]:
    node, client = start_service(state="kv", telemetry={"traces": "memory"})
    bridge = node.runtime.transport
    assert isinstance(bridge, NatsBridge)
    settled = Settled()
    bridge.events.add_listener(settled)
    nc = io.run(nats.connect(nats_server.url), timeout=WAIT)
    try:
        dead = io.run(nc.subscribe(DEAD_LETTERS), timeout=WAIT)
        planned = io.run(nc.subscribe(PLANNED), timeout=WAIT)
        io.run(nc.flush(), timeout=WAIT)
        yield Edges(client, io, nc, settled, dead, planned)
    finally:
        io.run(nc.close(), timeout=WAIT)


def _note(label: str) -> None:
    """Count `label` in hypothesis's statistics (when the check runs as a property)."""
    if currently_in_test_context():
        event(label)


def _assert_serving(edges: Edges) -> None:
    """The node is ready, not failing its health checks, and answers a known-good request."""
    ready = edges.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    good = edges.http.post(SUPPORT, json=BILLING)
    assert good.status_code == 200, good.text
    health = edges.http.get("/healthz")
    assert health.json()["status"] != "fail", health.text


def _assert_typed_http(response: httpx.Response) -> None:
    status, content_type = response.status_code, response.headers.get("content-type", "")
    _note(f"HTTP {status}")
    assert status in TYPED_STATUSES, f"{status}: {response.text[:500]}"
    if status == 200:
        assert content_type.startswith("application/json"), content_type
        msgspec.json.decode(response.content)
    else:
        assert content_type.startswith(PROBLEM_JSON), f"{status} {content_type}: {response.text}"
        problem = msgspec.json.decode(response.content)
        assert problem["status"] == status, problem


def _assert_typed_reply(msg: Msg) -> Any:
    try:
        value = decode_reply(msg.data, msg.headers)
    except InternalError as error:
        pytest.fail(f"an internal error, not a typed refusal: {error!r}")
    except AgentError as error:
        _note(f"refused: {error.code}")
        return error
    _note(f"answered: {type(value).__name__}")
    return value


# --- the properties ---------------------------------------------------------------------


def check_http_headers(edges: Edges, headers: list[tuple[bytes, bytes]], tickets: bool) -> None:
    body = {"user_id": "jane", "ticket_id": "T-none"} if tickets else BILLING
    sent = edges.http.post(TICKETS if tickets else SUPPORT, json=body, headers=headers)
    _assert_typed_http(sent)
    _assert_serving(edges)


def check_http_body(edges: Edges, route_and_body: tuple[str, bytes]) -> None:
    route, body = route_and_body
    sent = edges.http.post(route, content=body, headers={"content-type": "application/json"})
    _assert_typed_http(sent)
    _assert_serving(edges)


def check_nats_headers(edges: Edges, headers: dict[str, Any]) -> None:
    body = encode(SupportRequest(user_id="jane", message=BILLING["message"]))
    _assert_typed_reply(edges.request(body, _rendered(headers)))
    _assert_serving(edges)


def check_nats_body(edges: Edges, body: bytes | list[Any], headers: dict[str, Any] | None) -> None:
    data = body if isinstance(body, bytes) else encode(_rendered(body))
    _assert_typed_reply(edges.request(data, None if headers is None else _rendered(headers)))
    _assert_serving(edges)


async def _next_on(subscription: Subscription, matches: Callable[[Msg], bool]) -> Msg:
    while True:
        msg = await subscription.next_msg(timeout=WAIT)
        if matches(msg):
            return msg


def _probe_of(dead_letter_headers: dict[str, str]) -> str | None:
    """The probe of a dead letter: its header, or in the dead letter's id if it had to go."""
    probe = dead_letter_headers.get(PROBE)
    if probe is None and dead_letter_headers.get(MSG_ID, "").startswith("dlq.probe-"):
        probe = dead_letter_headers[MSG_ID].removeprefix("dlq.probe-")
    return probe


def check_event(
    edges: Edges, fields: dict[str, Any], headers: dict[str, str], msg_id: str | None
) -> None:
    raw = order_created_fields()
    probe = uuid.uuid4().hex  # finds this event's dead letter, whatever its id was
    filling = isinstance(fields["order_id"], Filling)
    if filling:  # its dead letter may keep only its id: the probe's
        msg_id = None
    headers = {**headers, PROBE: probe, MSG_ID: f"probe-{probe}" if msg_id is None else msg_id}
    raw.update(fields)
    if filling:
        _note("event filling max_payload")
        raw["order_id"] = ""
        # A long string's MessagePack header is 4 bytes longer than an empty one's.
        room = edges.nc.max_payload - fields["order_id"] - headers_size(headers) - 4
        raw["order_id"] = "x" * (room - len(encode(raw)))
    try:
        ack = edges.io.run(
            edges.nc.jetstream().publish(EVENT_SUBJECT, encode(raw), headers=headers, timeout=WAIT),
            timeout=WAIT + 1,
        )
    except nats.js.errors.APIError as refused:  # JetStream's own checks: the node never sees it
        _note(f"event refused by JetStream: {refused.err_code}")
        _assert_serving(edges)
        return
    if ack.duplicate:  # a random dedup id drawn twice: JetStream dropped it
        _note("event duplicate")
        _assert_serving(edges)
        return
    outcome = edges.settled.wait(ack.seq)
    _note(f"event {outcome}")
    if outcome is Outcome.DEAD_LETTER:
        dead = edges.io.run(
            _next_on(edges.dead, lambda m: _probe_of(m.headers or {}) == probe),
            timeout=WAIT + 1,
        )
        assert (dead.headers or {}).get(ERROR_CODE) == "bad_request", dead.headers
    else:
        assert outcome is Outcome.ACKED, f"{outcome}: handled neither well nor as bad input"
        order_id = fields["order_id"]
        if order_id not in edges.planned_orders:
            edges.io.run(
                _next_on(
                    edges.planned, lambda m: decode(m.data, ShipmentPlanned).order_id == order_id
                ),
                timeout=WAIT + 1,
            )
            edges.planned_orders.add(order_id)
    _assert_serving(edges)


def _run(examples: int, prop: Callable[..., None], **strategies: st.SearchStrategy[Any]) -> None:
    """Run `prop(**drawn)` for `examples` hypothesis examples on one node."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(**strategies)
    def check(**drawn: Any) -> None:
        prop(**drawn)

    check()


def _http_headers(edges: Edges, examples: int) -> None:
    prop = functools.partial(check_http_headers, edges)
    _run(examples, prop, headers=http_headers, tickets=st.booleans())


def _http_bodies(edges: Edges, examples: int) -> None:
    _run(examples, functools.partial(check_http_body, edges), route_and_body=http_bodies)


def _nats_headers(edges: Edges, examples: int) -> None:
    _run(examples, functools.partial(check_nats_headers, edges), headers=nats_headers)


def _nats_bodies(edges: Edges, examples: int) -> None:
    prop = functools.partial(check_nats_body, edges)
    _run(examples, prop, body=nats_bodies, headers=st.none() | nats_headers)


def _events(edges: Edges, examples: int) -> None:
    prop = functools.partial(check_event, edges)
    _run(examples, prop, fields=_order_fields, headers=event_headers, msg_id=event_ids)


def test_a_few_random_inputs_at_every_edge_get_typed_answers_and_the_node_keeps_serving(
    edges: Edges,
) -> None:
    for edge in (_http_headers, _http_bodies, _nats_headers, _nats_bodies, _events):
        edge(edges, FAST_EXAMPLES)


@pytest.mark.slow
def test_random_http_headers_get_typed_answers_and_the_node_keeps_serving(edges: Edges) -> None:
    _http_headers(edges, SLOW_EXAMPLES)


@pytest.mark.slow
def test_random_ids_in_http_bodies_get_typed_answers_and_the_node_keeps_serving(
    edges: Edges,
) -> None:
    _http_bodies(edges, SLOW_EXAMPLES)


@pytest.mark.slow
def test_random_nats_request_headers_get_typed_replies_and_the_node_keeps_serving(
    edges: Edges,
) -> None:
    _nats_headers(edges, SLOW_EXAMPLES)


@pytest.mark.slow
def test_random_nats_bodies_and_envelopes_get_typed_replies_and_the_node_keeps_serving(
    edges: Edges,
) -> None:
    _nats_bodies(edges, SLOW_EXAMPLES)


@pytest.mark.slow
def test_random_event_fields_are_handled_or_dead_lettered_and_the_node_keeps_serving(
    edges: Edges,
) -> None:
    _events(edges, SLOW_EXAMPLES)
