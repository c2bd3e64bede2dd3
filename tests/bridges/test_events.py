"""Domain events on JetStream: dedup, ack after handling, redelivery, dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import msgspec
import pytest

from actors import Runtime
from bridges import NatsBridge, NatsServer, Outcome
from bridges.http._journal import Journal
from config import EventSettings
from messages import BadRequest, Metadata, Ping, Unavailable
from supervisors import Strategy, Supervisor, SupervisorSpec, agent_child
from tests.agents import (
    DELIVERIES,
    OrderAgent,
    OrderPlaced,
    PlaceOrder,
    gate,
    wait_deliveries,
)
from tests.bridges.conftest import BridgeFactory
from tests.conftest import WAIT

FAST_RETRIES = EventSettings(max_deliver=3, backoff=[0.01, 0.02], handler_timeout=5.0)


@pytest.fixture
def orders(runtime: Runtime, connect: BridgeFactory) -> Iterator[NatsBridge]:
    """One supervised OrderAgent, served and subscribed to OrderPlaced."""
    DELIVERIES.clear()
    OUTCOMES.clear()
    supervisor = Supervisor.start(
        SupervisorSpec(
            name="orders",
            strategy=Strategy.ONE_FOR_ONE,
            children=[agent_child(OrderAgent, runtime, id="0")],
            max_restarts=10,
        ),
        runtime,
    )
    bridge = connect(runtime, [OrderAgent], events=FAST_RETRIES)
    bridge.events.add_listener(_record_outcome)
    yield bridge
    supervisor.shutdown()


OUTCOMES: list[Outcome] = []
SETTLED = threading.Condition()


def _record_outcome(_subject: str, _sequence: int, outcome: Outcome) -> None:
    with SETTLED:
        OUTCOMES.append(outcome)
        SETTLED.notify_all()


def _settled(count: int) -> bool:
    with SETTLED:
        return SETTLED.wait_for(lambda: len(OUTCOMES) >= count, WAIT)


def _deliveries_of(order_id: str) -> list[int]:
    return [n for order, n in DELIVERIES if order == order_id]


def _handled(order_id: str, count: int = 1) -> bool:
    return wait_deliveries(lambda d: sum(1 for o, _ in d if o == order_id) >= count, WAIT)


def test_an_event_published_by_a_handler_is_handled_by_its_subscriber(
    runtime: Runtime, orders: NatsBridge
) -> None:
    event_id = runtime.ref("order").ask(PlaceOrder(order_id="ok-1"), timeout=WAIT)
    assert _handled("ok-1")
    assert _deliveries_of("ok-1") == [1]
    assert event_id.endswith(".e1")
    assert orders.events.statistics.published == 1


def test_a_retried_request_publishes_its_event_once(runtime: Runtime, orders: NatsBridge) -> None:
    order = runtime.ref("order")
    first = order.ask(PlaceOrder(order_id="dup-1"), timeout=WAIT, message_id="req-dup")
    again = order.ask(PlaceOrder(order_id="dup-1"), timeout=WAIT, message_id="req-dup")
    order.ask(PlaceOrder(order_id="after-1"), timeout=WAIT)
    # One agent handles events in stream order: once the later event is
    # handled, a duplicate of the earlier one would have been too.
    assert _handled("after-1")
    assert first == again
    assert _deliveries_of("dup-1") == [1]
    assert orders.events.statistics.duplicates == 1


def test_a_failed_event_is_redelivered_with_its_delivery_count_until_it_succeeds(
    runtime: Runtime, orders: NatsBridge
) -> None:
    runtime.ref("order").ask(PlaceOrder(order_id="fail-2"), timeout=WAIT)
    assert _settled(3)
    assert _deliveries_of("fail-2") == [1, 2, 3]
    assert OUTCOMES == [Outcome.RETRY, Outcome.RETRY, Outcome.ACKED]
    stats = orders.events.statistics
    assert (stats.failed, stats.handled, stats.dead_lettered) == (2, 1, 0)


def test_an_event_that_keeps_failing_goes_to_the_dead_letters_with_its_error(
    runtime: Runtime, orders: NatsBridge
) -> None:
    runtime.ref("order").ask(PlaceOrder(order_id="poison"), timeout=WAIT)
    assert _settled(FAST_RETRIES.max_deliver)
    assert OUTCOMES[-1] == Outcome.DEAD_LETTER
    letter = orders.io.run(
        orders.events.js.get_last_msg(FAST_RETRIES.dead_letter_stream, "af.dlq.OrderPlaced"),
        timeout=WAIT,
    )
    assert letter.headers is not None
    assert letter.headers["Af-Error-Code"] == "overloaded"
    assert letter.headers["Af-Error"] == "cannot take this order"
    assert letter.headers["Af-Delivery"] == str(FAST_RETRIES.max_deliver)
    assert msgspec.msgpack.decode(letter.data, type=OrderPlaced) == OrderPlaced(order_id="poison")
    runtime.ref("order").ask(PlaceOrder(order_id="after-2"), timeout=WAIT)
    assert _handled("after-2")
    assert _deliveries_of("poison") == [1, 2, 3]
    assert orders.events.statistics.dead_lettered == 1


def test_a_crash_mid_handling_loses_nothing(runtime: Runtime, orders: NatsBridge) -> None:
    runtime.ref("order").ask(PlaceOrder(order_id="crash-1"), timeout=WAIT)
    assert _settled(2)
    assert _deliveries_of("crash-1") == [1, 2]
    assert OUTCOMES == [Outcome.RETRY, Outcome.ACKED]
    assert orders.events.statistics.dead_lettered == 0


def test_publishing_without_a_transport_is_unavailable(runtime: Runtime) -> None:
    OrderAgent.spawn(runtime)
    with pytest.raises(Unavailable, match="no transport"):
        runtime.ref("order").ask(PlaceOrder(order_id="nowhere"), timeout=WAIT)


def test_publishing_something_that_is_not_an_event_is_a_bad_request(
    runtime: Runtime, orders: NatsBridge
) -> None:
    with pytest.raises(BadRequest, match="Ping"):
        orders.publish(Ping(), Metadata(id="not-an-event", deadline=time.time() + WAIT))  # type: ignore[arg-type]


def test_events_wait_on_the_server_not_in_a_busy_agents_mailbox(
    runtime: Runtime, connect: BridgeFactory
) -> None:
    DELIVERIES.clear()
    OrderAgent.spawn(runtime)
    tight = EventSettings(max_deliver=1, handler_timeout=0.5, backoff=[0.01])
    bridge = connect(runtime, [OrderAgent], events=tight)
    for i in range(6):
        bridge.publish(OrderPlaced(order_id="busy-0.2"), _meta(f"busy-{i}"))
    # One agent, 0.2 s each, 0.5 s budget: fetched all at once, most would
    # time out queued; fetched two at a time, each starts within its budget.
    assert wait_deliveries(lambda d: len(d) >= 6, WAIT * 2)
    assert bridge.events.statistics.dead_lettered == 0


def test_a_closing_bridge_acks_the_events_its_agents_are_handling(
    runtime: Runtime, connect: BridgeFactory, nats_server: NatsServer
) -> None:
    DELIVERIES.clear()
    OrderAgent.spawn(runtime)
    bridge = connect(runtime, [OrderAgent], events=FAST_RETRIES)
    entered, release = gate("closing-events")
    bridge.publish(OrderPlaced(order_id="gate-closing-events"), _meta("gated"))
    assert entered.wait(WAIT)
    closing = bridge.io.submit(bridge.close())
    release.set()
    closing.result(WAIT)
    # A fresh connection sees the event acked, not waiting for redelivery.
    observer = connect(Runtime(node="observer"))
    info = observer.io.run(
        observer.events.js.consumer_info(FAST_RETRIES.stream, "order_OrderPlaced"), timeout=WAIT
    )
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert info.ack_floor.stream_seq == 1


def test_a_durable_consumer_takes_the_current_settings(
    runtime: Runtime, connect: BridgeFactory
) -> None:
    OrderAgent.spawn(runtime)
    first = connect(runtime, [OrderAgent], events=EventSettings(handler_timeout=30.0))
    first.io.run(first.close(), timeout=WAIT)
    second = connect(runtime, [OrderAgent], events=EventSettings(handler_timeout=2.0))
    info = second.io.run(
        second.events.js.consumer_info("AF_EVENTS", "order_OrderPlaced"), timeout=WAIT
    )
    assert info.config.ack_wait == 7.0  # handler_timeout + 5 s


def test_a_lost_connection_stops_the_consumers(
    runtime: Runtime, connect: BridgeFactory, nats_server: NatsServer
) -> None:
    OrderAgent.spawn(runtime)
    bridge = connect(runtime, [OrderAgent], max_reconnect_attempts=0)
    closed = threading.Event()
    bridge.on_state_change(lambda state: state == "closed" and closed.set())
    nats_server.kill()
    assert closed.wait(WAIT)
    bridge.io.run(bridge.close(), timeout=WAIT)
    assert bridge.events._tasks == []
    assert bridge.state == "closed"


def _meta(message_id: str) -> Metadata:
    return Metadata(id=message_id, deadline=time.time() + WAIT)


def test_the_journal_hears_each_stored_event_once_and_its_settling(
    runtime: Runtime, orders: NatsBridge
) -> None:
    journal = Journal()
    orders.events.add_publish_listener(journal.published)
    orders.events.add_listener(journal.settled)
    order = runtime.ref("order")
    order.ask(PlaceOrder(order_id="seen-1"), timeout=WAIT, message_id="req-seen")
    order.ask(PlaceOrder(order_id="seen-1"), timeout=WAIT, message_id="req-seen")  # a duplicate
    assert _handled("seen-1")
    assert _settled(1)
    kinds = [(e.kind, e.source.rsplit(".", 1)[-1]) for e in journal.events()]
    assert kinds == [("published", "OrderPlaced"), ("acked", "OrderPlaced")]
    assert journal.events()[0].text == journal.events()[1].text  # the same stream sequence
