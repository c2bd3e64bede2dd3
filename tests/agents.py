"""Agents and messages shared by the tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from actors import Agent, Context, handler
from messages import Event, Message, NotFound, Overloaded, Ping, Pong, Principal


class Echo(Message, frozen=True, kw_only=True):
    text: str


class Echoed(Message, frozen=True, kw_only=True):
    text: str
    by: str


class Crash(Message, frozen=True, kw_only=True):
    reason: str = "injected"


class Refuse(Message, frozen=True, kw_only=True):
    pass


class Block(Message, frozen=True, kw_only=True):
    """Block the handler until the test's gate opens."""

    gate: str


class Forward(Message, frozen=True, kw_only=True):
    target: str
    text: str


class Budget(Message, frozen=True, kw_only=True):
    deadline: float
    remaining: float
    correlation_id: str | None
    sender: str | None
    priority: str
    traceparent: str | None
    principal: Principal | None = None


class Inspect(Message, frozen=True, kw_only=True):
    pass


class Grow(Message, frozen=True, kw_only=True):
    """Ask for an Echoed reply of `size` characters."""

    size: int


GATES: dict[str, threading.Event] = {}
ENTERED: dict[str, threading.Event] = {}
HANDLED: list[str] = []


def gate(name: str) -> tuple[threading.Event, threading.Event]:
    """Return (entered, release) events for a Block message named `name`."""
    GATES[name] = threading.Event()
    ENTERED[name] = threading.Event()
    return ENTERED[name], GATES[name]


class WorkerAgent(Agent):
    """Answers echoes, crashes on request, blocks on a gate, forwards asks."""

    @handler
    def echo(self, msg: Echo, ctx: Context) -> Echoed:
        HANDLED.append(msg.text)
        return Echoed(text=msg.text, by=self.name)

    @handler
    def grow(self, msg: Grow, ctx: Context) -> Echoed:
        return Echoed(text="x" * msg.size, by=self.name)

    @handler
    def ping(self, msg: Ping, ctx: Context) -> Pong:
        return Pong(payload=msg.payload, responder=self.name)

    @handler
    def crash(self, msg: Crash, ctx: Context) -> None:
        raise RuntimeError(msg.reason)

    @handler
    def refuse(self, msg: Refuse, ctx: Context) -> None:
        raise NotFound("no such thing")

    @handler
    def block(self, msg: Block, ctx: Context) -> str:
        ENTERED[msg.gate].set()
        GATES[msg.gate].wait(10)
        return msg.gate

    @handler
    def forward(self, msg: Forward, ctx: Context) -> Budget:
        result: Budget = ctx.ask(msg.target, Inspect())
        return result

    @handler
    def inspect(self, msg: Inspect, ctx: Context) -> Budget:
        return Budget(
            deadline=ctx.deadline,
            remaining=ctx.remaining(),
            correlation_id=ctx.metadata.correlation_id,
            sender=ctx.metadata.sender,
            priority=ctx.metadata.priority,
            traceparent=ctx.metadata.traceparent,
            principal=ctx.principal,
        )


class OtherAgent(WorkerAgent):
    """A second agent type with the same handlers."""


STOPPED: list[str] = []


class RecordingAgent(WorkerAgent):
    """Records the order in which instances stop gracefully."""

    def on_stop(self) -> None:
        STOPPED.append(self.name)


class CrashOnStartAgent(WorkerAgent):
    """Starts, then crashes on its first tick: a pool that can never stay up."""

    def on_start(self) -> None:
        self.ref.tell(Crash(reason="cannot stay up"))


class OrderPlaced(Event, frozen=True, kw_only=True):
    """A domain event; `order_id` says how its handler behaves (see OrderAgent)."""

    order_id: str


class PlaceOrder(Message, frozen=True, kw_only=True):
    order_id: str


DELIVERIES: list[tuple[str, int]] = []
DELIVERED = threading.Condition()


def wait_deliveries(predicate: Callable[[list[tuple[str, int]]], bool], timeout: float) -> bool:
    """Wait until `predicate(DELIVERIES)` holds."""
    with DELIVERED:
        return DELIVERED.wait_for(lambda: predicate(DELIVERIES), timeout)


class OrderAgent(Agent):
    """Publishes OrderPlaced on PlaceOrder; records each OrderPlaced delivery.

    An order id `fail-N` fails its first N deliveries, `poison` always fails,
    `crash-N` crashes the agent on its first N deliveries, `gate-NAME`
    blocks until the test opens gate NAME, `busy-S` works for S seconds.
    """

    @handler
    def place(self, msg: PlaceOrder, ctx: Context) -> str:
        return ctx.publish(OrderPlaced(order_id=msg.order_id))

    @handler
    def placed(self, msg: OrderPlaced, ctx: Context) -> None:
        with DELIVERED:
            DELIVERIES.append((msg.order_id, ctx.delivery))
            DELIVERED.notify_all()
        kind, _, count = msg.order_id.partition("-")
        if kind == "poison":
            raise Overloaded("cannot take this order")
        if kind == "fail" and ctx.delivery <= int(count):
            raise Overloaded("not yet")
        if kind == "gate":
            ENTERED[count].set()
            GATES[count].wait(10)
        if kind == "busy":
            time.sleep(float(count))  # simulated work, not synchronisation
        if kind == "crash" and ctx.delivery <= int(count):
            raise RuntimeError("crashed mid-handling")


class Charge(Message, frozen=True, kw_only=True):
    account: str
    amount: int


class Charged(Event, frozen=True, kw_only=True):
    account: str
    amount: int


class Receipt(Message, frozen=True, kw_only=True):
    event_id: str
    node: str


LEDGER: dict[str, int] = {}
LEDGER_CHANGED = threading.Condition()


class LedgerAgent(Agent):
    """Charges by publishing a `Charged` event (its side effect); records the events it sees."""

    @handler
    def charge(self, msg: Charge, ctx: Context) -> Receipt:
        event_id = ctx.publish(Charged(account=msg.account, amount=msg.amount))
        return Receipt(event_id=event_id, node=self.runtime.node)

    @handler
    def charged(self, msg: Charged, ctx: Context) -> None:
        with LEDGER_CHANGED:
            LEDGER[msg.account] = LEDGER.get(msg.account, 0) + 1
            LEDGER_CHANGED.notify_all()
