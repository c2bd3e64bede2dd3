"""Fuzz the agent subjects: whatever arrives, the node answers with a typed reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from actors import Runtime
from bridges import IoLoop, NatsServer
from bridges.nats._wire import DEADLINE, PRIORITY, decode_reply
from messages import AgentError, ErrorCode, encode
from tests.agents import Echo, Echoed, OrderPlaced, WorkerAgent
from tests.bridges.conftest import BridgeFactory
from tests.conftest import WAIT

SUBJECT = "af.agent.worker"


class Huge(bytes):
    """A body just under the server's limit, with a short repr for failure reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


HUGE = Huge(b"\x00" * 900_000)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
wrong_messages = st.one_of(
    st.builds(OrderPlaced, order_id=st.text(max_size=20)),
    st.builds(lambda t: {"type": "Echo", "text": t}, st.integers(0, 2**32) | st.binary()),
    st.builds(lambda t: {"type": t, "text": "x"}, st.text(max_size=10)),
)
bodies = st.one_of(
    st.binary(max_size=2048),
    msgpack_values.map(encode),
    wrong_messages.map(encode),
    st.just(b""),
    st.just(HUGE),
)
headers = st.none() | st.fixed_dictionaries(
    {},
    optional={
        DEADLINE: st.text(max_size=20) | st.floats(min_value=1e9, max_value=1e10).map(repr),
        PRIORITY: st.sampled_from(["critical", "default", "sheddable", "urgent", ""]),
    },
)


@pytest.fixture
def raw_client(
    runtime: Runtime, connect: BridgeFactory, nats_server: NatsServer, io: IoLoop
) -> Iterator[tuple[IoLoop, Client]]:
    WorkerAgent.spawn(runtime, instance="fuzzed")
    connect(runtime, [WorkerAgent])
    nc = io.run(nats.connect(nats_server.url), timeout=WAIT)
    yield io, nc
    io.run(nc.close(), timeout=WAIT)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, header=headers)
def test_any_payload_gets_a_typed_reply_and_the_node_keeps_serving(
    raw_client: tuple[IoLoop, Client], body: bytes, header: dict[str, str] | None
) -> None:
    io, nc = raw_client
    msg = io.run(nc.request(SUBJECT, body, WAIT, headers=header), timeout=WAIT)
    outcome: Any
    try:
        outcome = decode_reply(msg.data, msg.headers)
    except AgentError as error:
        outcome = error
    # Only a well-formed Echo is answered; everything else is refused, typed.
    assert isinstance(outcome, Echoed) or outcome.code in {ErrorCode.BAD_REQUEST, ErrorCode.TIMEOUT}
    ok = io.run(nc.request(SUBJECT, encode(Echo(text="alive")), WAIT), timeout=WAIT)
    assert decode_reply(ok.data, ok.headers).text == "alive"
