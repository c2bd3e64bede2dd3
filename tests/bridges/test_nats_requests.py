"""Agents reached over NATS: same API and error semantics as in-process."""

from __future__ import annotations

import json
import math
import threading
import time

import msgspec
import nats
import pytest

from actors import Agent, Context, Runtime, handler
from bridges import IoLoop, NatsServer
from bridges.nats._wire import (
    DEADLINE,
    ID,
    MAX_BUDGET_S,
    REPLY_TYPE,
    decode_reply,
    encode_request,
    metadata_headers,
)
from messages import (
    BadRequest,
    InternalError,
    Message,
    Metadata,
    NotFound,
    PayloadTooLarge,
    Principal,
    Priority,
    RequestTimeout,
    Scope,
    Unavailable,
    encode,
)
from tests.agents import (
    HANDLED,
    Block,
    Crash,
    Echo,
    Echoed,
    Forward,
    Grow,
    Inspect,
    Refuse,
    WorkerAgent,
    gate,
)
from tests.bridges.conftest import BridgeFactory
from tests.conftest import WAIT


@pytest.fixture
def served(runtime: Runtime, connect: BridgeFactory) -> Runtime:
    """`runtime` runs two workers and serves them over NATS."""
    WorkerAgent.spawn(runtime, instance="a")
    WorkerAgent.spawn(runtime, instance="b")
    connect(runtime, [WorkerAgent])
    return runtime


@pytest.fixture
def caller(other_runtime: Runtime, connect: BridgeFactory) -> Runtime:
    """A node with no agents of its own: every ask crosses NATS."""
    connect(other_runtime)
    return other_runtime


def test_an_ask_reaches_an_agent_on_another_node(served: Runtime, caller: Runtime) -> None:
    reply = caller.ref("worker").ask(Echo(text="over nats"), timeout=2)
    assert isinstance(reply, Echoed)
    assert reply.text == "over nats"
    assert reply.by.startswith("worker/")


def test_an_agent_error_is_raised_with_its_type_on_the_caller(
    served: Runtime, caller: Runtime
) -> None:
    with pytest.raises(NotFound, match="no such thing"):
        caller.ref("worker").ask(Refuse(), timeout=2)


def test_a_crash_reaches_the_remote_caller_as_an_internal_error(
    served: Runtime, caller: Runtime
) -> None:
    with pytest.raises(InternalError):
        caller.ref("worker").ask(Crash(), timeout=2)
    assert caller.ref("worker").ask(Echo(text="still served"), timeout=2).text == "still served"


def test_no_responders_is_unavailable_at_once(caller: Runtime) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"af\.agent\.nobody"):
        caller.ref("nobody").ask(Echo(text="x"), timeout=3)
    assert time.monotonic() - started < 1.0


def test_metadata_travels_in_headers_and_the_handler_sees_its_budget(
    served: Runtime, caller: Runtime
) -> None:
    deadline = time.time() + 3
    budget = caller.ref("worker").ask(
        Inspect(),
        deadline=deadline,
        priority=Priority.CRITICAL,
        correlation_id="corr-1",
        sender="client/7",
    )
    assert budget.deadline == deadline
    assert 0 < budget.remaining <= 3
    assert budget.priority == Priority.CRITICAL
    assert budget.correlation_id == "corr-1"
    assert budget.sender == "client/7"


def test_an_agent_asking_onwards_passes_its_deadline_across_nodes(
    served: Runtime, caller: Runtime
) -> None:
    deadline = time.time() + 2
    # The first hop crosses NATS; the worker then asks a local worker.
    budget = caller.ref("worker").ask(Forward(target="worker", text=""), deadline=deadline)
    assert budget.deadline == deadline
    assert budget.sender is not None
    assert budget.sender.startswith("worker/")


def test_a_tell_crosses_nats(served: Runtime, caller: Runtime) -> None:
    HANDLED.clear()
    caller.ref("worker").tell(Echo(text="told"))
    # The ask that follows is answered after the tell was taken by one of
    # two workers; wait on that worker's answer to a marker on each.
    for _ in range(2):
        caller.ref("worker").ask(Echo(text="marker"), timeout=2)
    assert "told" in HANDLED


def test_a_payload_over_the_server_limit_fails_before_sending(
    served: Runtime, caller: Runtime
) -> None:
    HANDLED.clear()
    with pytest.raises(PayloadTooLarge) as caught:
        caller.ref("worker").ask(Echo(text="x" * (2 << 20)), timeout=2)
    assert caught.value.limit == 1 << 20
    assert isinstance(caught.value, BadRequest)
    assert HANDLED == []


def test_local_agents_are_asked_without_crossing_nats(
    runtime: Runtime, connect: BridgeFactory
) -> None:
    WorkerAgent.spawn(runtime, instance="local")
    bridge = connect(runtime, [WorkerAgent])
    runtime.ref("worker").ask(Echo(text="local"), timeout=2)
    service = bridge.service("worker")
    assert service is not None
    stats = service.stats()
    assert stats.endpoints[0].num_requests == 0


def test_prefer_local_off_sends_even_local_asks_through_nats(
    runtime: Runtime, connect: BridgeFactory
) -> None:
    WorkerAgent.spawn(runtime, instance="local")
    bridge = connect(runtime, [WorkerAgent], prefer_local=False)
    runtime.ref("worker").ask(Echo(text="via nats"), timeout=2)
    service = bridge.service("worker")
    assert service is not None
    assert service.stats().endpoints[0].num_requests == 1


async def test_an_expired_request_is_refused_without_being_handled(
    served: Runtime, nats_server: NatsServer
) -> None:
    HANDLED.clear()
    nc = await nats.connect(nats_server.url)
    try:
        headers = {ID: "late-1", DEADLINE: repr(time.time() - 1)}
        msg = await nc.request("af.agent.worker", encode(Echo(text="late")), 2, headers=headers)
    finally:
        await nc.close()
    with pytest.raises(RequestTimeout):
        decode_reply(msg.data, msg.headers)
    assert "late" not in HANDLED


async def test_malformed_requests_get_bad_request_and_the_node_keeps_serving(
    served: Runtime, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        for body in (b"\xc1garbage", b"", encode({"type": "Echo", "text": 5}), encode([1, 2])):
            msg = await nc.request("af.agent.worker", body, 2)
            with pytest.raises(BadRequest):
                decode_reply(msg.data, msg.headers)
        bad_header = await nc.request(
            "af.agent.worker", encode(Echo(text="x")), 2, headers={DEADLINE: "soon"}
        )
        with pytest.raises(BadRequest, match="Af-Deadline"):
            decode_reply(bad_header.data, bad_header.headers)
        ok = await nc.request("af.agent.worker", encode(Echo(text="fine")), 2)
    finally:
        await nc.close()
    assert decode_reply(ok.data, ok.headers) == Echoed(text="fine", by=ok_by(ok))


def ok_by(msg: nats.aio.msg.Msg) -> str:
    by: str = msgspec.msgpack.decode(msg.data)["by"]
    assert by.startswith("worker/")
    return by


async def test_every_agent_type_is_discoverable_as_a_micro_service(
    served: Runtime, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        ping = json.loads((await nc.request("$SRV.PING.worker", b"", 2)).data)
        info = json.loads((await nc.request("$SRV.INFO.worker", b"", 2)).data)
        stats = json.loads((await nc.request("$SRV.STATS.worker", b"", 2)).data)
    finally:
        await nc.close()
    assert ping["name"] == "worker"
    assert ping["metadata"]["node"] == served.node
    [endpoint] = info["endpoints"]
    assert endpoint["subject"] == "af.agent.worker"
    assert endpoint["queue_group"] == "worker"
    assert "Echo" in endpoint["metadata"]["requests"].split(",")
    schema = json.loads(endpoint["metadata"]["schema"])
    assert "Echo" in schema["$defs"]
    assert stats["endpoints"][0]["num_requests"] >= 0


def test_a_closing_bridge_still_answers_the_requests_its_agents_are_handling(
    runtime: Runtime, connect: BridgeFactory, caller: Runtime
) -> None:
    WorkerAgent.spawn(runtime, instance="slow")
    bridge = connect(runtime, [WorkerAgent])
    entered, release = gate("drain")
    draining = threading.Event()
    bridge.on_state_change(lambda state: state == "draining" and draining.set())
    pending = caller.ref("worker").ask_async(Block(gate="drain"), timeout=WAIT)
    assert entered.wait(WAIT)
    closing = bridge.io.submit(bridge.close())
    assert draining.wait(WAIT)
    # The bridge no longer takes requests but waits for the one in flight.
    with pytest.raises(Unavailable):
        caller.ref("worker").ask(Echo(text="too late"), timeout=WAIT)
    release.set()
    assert pending.get() == "drain"
    closing.result(WAIT)


async def test_any_nats_client_can_call_an_agent_with_metadata_in_headers(
    served: Runtime, nats_server: NatsServer
) -> None:
    meta = Metadata(
        id="from-elsewhere",
        deadline=time.time() + 3,
        correlation_id="corr-9",
        priority=Priority.SHEDDABLE,
        sender="other-service",
    )
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.request(
            "af.agent.worker", encode(Inspect()), 2, headers=metadata_headers(meta)
        )
    finally:
        await nc.close()
    assert msg.headers is not None
    assert msg.headers[REPLY_TYPE] == "Budget"
    budget = decode_reply(msg.data, msg.headers)
    assert budget.deadline == meta.deadline
    assert budget.priority == Priority.SHEDDABLE
    assert budget.correlation_id == "corr-9"
    assert budget.sender == "other-service"


def test_a_reply_over_the_server_limit_is_a_typed_error_not_a_timeout(
    served: Runtime, caller: Runtime
) -> None:
    # The reply's size error travels as its wire code, bad_request.
    with pytest.raises(BadRequest, match="over the limit"):
        caller.ref("worker").ask(Grow(size=2 << 20), timeout=WAIT)


def test_an_unencodable_request_is_a_bad_request(served: Runtime, caller: Runtime) -> None:
    with pytest.raises(BadRequest, match="cannot encode"):
        caller.ref("worker").ask(Echoed(text="x", by=2**70), timeout=WAIT)  # type: ignore[arg-type]


async def test_an_endless_deadline_from_the_network_is_bounded(
    served: Runtime, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        endless = Metadata(id="endless-1", deadline=math.inf)
        msg = await nc.request("af.agent.worker", encode_request(Inspect(), endless), 2)
    finally:
        await nc.close()
    budget = decode_reply(msg.data, msg.headers)
    assert budget.deadline <= time.time() + MAX_BUDGET_S
    # The node's timers still run: a local ask with a short deadline times out on time.
    assert served.ref("worker").ask(Echo(text="after"), timeout=WAIT).text == "after"


def test_a_node_without_live_agents_leaves_the_queue_group(
    runtime: Runtime, other_runtime: Runtime, connect: BridgeFactory, io: IoLoop
) -> None:
    emptied = Runtime(node="emptied")
    try:
        WorkerAgent.spawn(emptied, instance="doomed").kill()
        emptied_bridge = connect(emptied, [WorkerAgent])  # serves a type it has no agent of
        assert emptied_bridge.service("worker") is None
        WorkerAgent.spawn(runtime, instance="alive")
        connect(runtime, [WorkerAgent])
        connect(other_runtime)
        workers = other_runtime.ref("worker")
        answers = [workers.ask(Echo(text=str(i)), timeout=WAIT) for i in range(20)]
        assert {a.by for a in answers} == {"worker/alive"}
        # Its agent back, the node rejoins the queue group and gets requests again.
        WorkerAgent.spawn(emptied, instance="back")
        assert any(
            workers.ask(Echo(text="again"), timeout=WAIT).by == "worker/back" for _ in range(200)
        )
    finally:
        emptied.close()


def test_requests_in_flight_fail_unavailable_when_the_callers_bridge_closes(
    served: Runtime, other_runtime: Runtime, connect: BridgeFactory
) -> None:
    bridge = connect(other_runtime)
    entered, release = gate("closing-caller")
    pending = other_runtime.ref("worker").ask_async(Block(gate="closing-caller"), timeout=WAIT)
    assert entered.wait(WAIT)
    bridge.io.run(bridge.close(), timeout=WAIT)
    with pytest.raises(Unavailable, match="closed before"):
        pending.get(timeout=1)
    release.set()


@pytest.mark.parametrize("deadline", ["inf", "nan", "1_000", "5.", "1e3", "٣", "+5", "0x10"])
async def test_a_deadline_header_must_be_plain_decimal(
    served: Runtime, nats_server: NatsServer, deadline: str
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.request(
            "af.agent.worker", encode(Echo(text="x")), 2, headers={DEADLINE: deadline}
        )
    finally:
        await nc.close()
    with pytest.raises(BadRequest, match="plain decimal"):
        decode_reply(msg.data, msg.headers)


async def _request_with_raw_headers(url: str, block: bytes, body: bytes) -> nats.aio.msg.Msg:
    """A request whose header block is written as given (repeated headers and all)."""
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        head = b"NATS/1.0\r\n" + block + b"\r\n"
        line = f"HPUB af.agent.worker {inbox} {len(head)} {len(head) + len(body)}\r\n"
        await nc._send_command(line.encode() + head + body + b"\r\n")
        await nc.flush()
        return await sub.next_msg(timeout=2)
    finally:
        await nc.close()


async def test_a_repeated_deadline_header_is_a_bad_request_not_last_one_wins(
    served: Runtime, nats_server: NatsServer
) -> None:
    soon, later = time.time() + 5, time.time() + 60
    block = f"{DEADLINE}: {soon!r}\r\n{DEADLINE}: {later!r}\r\n".encode()
    msg = await _request_with_raw_headers(nats_server.url, block, encode(Echo(text="x")))
    with pytest.raises(BadRequest, match="Af-Deadline"):
        decode_reply(msg.data, msg.headers)
    single = f"{DEADLINE}: {later!r}\r\n".encode()
    ok = await _request_with_raw_headers(nats_server.url, single, encode(Echo(text="x")))
    assert decode_reply(ok.data, ok.headers).text == "x"


@pytest.mark.parametrize(
    ("header", "value"),
    [(ID, "x" * 129), (ID, "has space"), ("Af-Correlation-Id", "c" * 5000), ("Af-Sender", "a\tb")],
)
async def test_an_id_header_that_is_not_a_bounded_identifier_is_a_bad_request(
    served: Runtime, nats_server: NatsServer, header: str, value: str
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.request(
            "af.agent.worker", encode(Echo(text="x")), 2, headers={header: value}
        )
    finally:
        await nc.close()
    with pytest.raises(BadRequest, match=header):
        decode_reply(msg.data, msg.headers)


async def test_an_envelope_id_that_is_not_a_bounded_identifier_is_a_bad_request(
    served: Runtime, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        for bad in ("x" * 129, "new\nline", ""):
            meta = Metadata(id=bad, deadline=time.time() + 5)
            msg = await nc.request("af.agent.worker", encode_request(Echo(text="x"), meta), 2)
            with pytest.raises(BadRequest):
                decode_reply(msg.data, msg.headers)
    finally:
        await nc.close()


class Lone(Message, frozen=True, kw_only=True):
    n: int


class LoneAgent(Agent):
    """Takes one request type."""

    agent_type = "lone"

    @handler
    def take(self, msg: Lone, ctx: Context) -> Lone:
        HANDLED.append(f"lone {msg.n}")
        return msg


async def test_a_body_without_its_type_tag_is_a_bad_request_even_for_a_lone_type(
    runtime: Runtime, connect: BridgeFactory, nats_server: NatsServer
) -> None:
    LoneAgent.spawn(runtime)
    connect(runtime, [LoneAgent])
    HANDLED.clear()
    nc = await nats.connect(nats_server.url)
    try:
        untagged = await nc.request("af.agent.lone", encode({"n": 1}), 2)
        tagged = await nc.request("af.agent.lone", encode(Lone(n=2)), 2)
        stats = json.loads((await nc.request("$SRV.STATS.lone", b"", 2)).data)
    finally:
        await nc.close()
    with pytest.raises(BadRequest, match=r"\"type\" must be one of Lone$"):
        decode_reply(untagged.data, untagged.headers)
    assert decode_reply(tagged.data, tagged.headers) == Lone(n=2)
    assert HANDLED == ["lone 2"]
    [endpoint] = stats["endpoints"]
    assert endpoint["num_requests"] == 2
    assert endpoint["num_errors"] == 1
    assert endpoint["last_error"].startswith("bad_request")


async def test_typed_error_replies_are_counted_in_the_micro_stats(
    served: Runtime, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.request("af.agent.worker", encode(Refuse()), 2)
        await nc.request("af.agent.worker", encode(Echo(text="fine")), 2)
        stats = json.loads((await nc.request("$SRV.STATS.worker", b"", 2)).data)
    finally:
        await nc.close()
    [endpoint] = stats["endpoints"]
    assert endpoint["num_requests"] == 2
    assert endpoint["num_errors"] == 1
    assert endpoint["last_error"].startswith("not_found")
    assert endpoint["processing_time"] > 0


def test_the_principal_travels_to_an_agent_on_another_node(
    served: Runtime, caller: Runtime
) -> None:
    jane = Principal(name="web", scope=Scope.SERVICE, user="jane")
    cause = Metadata(id="edge-1", deadline=time.time() + 5, principal=jane)
    seen = caller.ref("worker").ask(Inspect(), cause=cause, timeout=2)
    assert seen.principal == jane
    assert caller.ref("worker").ask(Inspect(), timeout=2).principal is None


async def test_a_version_1_envelope_from_an_older_node_is_served_without_a_principal(
    served: Runtime, nats_server: NatsServer
) -> None:
    older = encode([1, "old-1", time.time() + 5, None, "default", "old", None, None, Inspect()])
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.request("af.agent.worker", older, 2)
    finally:
        await nc.close()
    seen = decode_reply(msg.data, msg.headers)
    assert (seen.sender, seen.principal) == ("old", None)
