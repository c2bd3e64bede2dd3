"""Tools that write the service's records: tickets, orders, shipments, erasure.

Every record is created with compare-and-set under an id derived from the
request's message id and the record's owner, keyed with a secret kept in
the state store (`record_id`), so a retried request (same message id), or
two attempts of it at once, find the one record instead of making a
second, and no caller can compute another's record id. The tools that read
or change a user's records name their owner argument, so the runtime
refuses a principal acting for someone else; ticket creation and erasure
also honour the erasure fence (`actors.ErasureFence`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Final, TypeVar

import msgspec

from actors import (
    DataKeys,
    StateStore,
    ToolCall,
    begin_erasure,
    end_erasure,
    open_value,
    seal_value,
    state_key,
    tool,
)
from actors.support._messages import (
    Destination,
    ErasureReport,
    Intent,
    Order,
    Shipment,
    StoredTicket,
    Ticket,
    TicketText,
)
from messages import BadRequest, Unavailable, UserDataErased, new_message_id

ERASED: Final = "[erased]"
# 80 bits of an HMAC: ids nobody can compute without the service's secret.
_ID_DIGITS: Final = 20
_SECRET_BYTES: Final = 32
_CREATE_ATTEMPTS: Final = 3
T = TypeVar("T")
_stored_ticket: Final = msgspec.msgpack.Decoder(StoredTicket)
_ticket_text: Final = msgspec.msgpack.Decoder(TicketText)


def record_secret(state: StateStore) -> bytes:
    """The service's secret for record ids: made once, in the state store every node shares.

    Raises:
        Unavailable: If the store cannot settle one.
    """
    key = state_key("secret", "records")
    for _ in range(_CREATE_ATTEMPTS):
        held = state.get(key)
        if held is not None:
            return held
        state.compare_and_set(key, None, secrets.token_bytes(_SECRET_BYTES))
    msg = "could not settle the record-id secret"
    raise Unavailable(msg)


def record_id(prefix: str, call: ToolCall, owner: str) -> str:
    """An id that is the same for every retry of the request, per owner, and unguessable.

    The owner is part of it because request ids are chosen by callers and
    may collide between them; the secret, because a caller that knows a
    request id and a user id must not be able to compute the record's id.
    """
    seed = f"{call.context.metadata.id}|{owner}".encode()
    digest = hmac.new(record_secret(call.state), seed, hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:_ID_DIGITS].upper()}"


def ticket_key(ticket_id: str) -> str:
    """Where a ticket is stored."""
    return state_key("ticket", ticket_id)


def memory_prefix(user_id: str) -> str:
    """Where a user's conversation memories are stored (`<prefix>.<conversation>`)."""
    return state_key("mem", user_id)


def memory_key(user_id: str, conversation_id: str) -> str:
    """Where one conversation's memory is stored."""
    return state_key("mem", user_id, conversation_id)


def _user_tickets(user_id: str) -> str:
    return state_key("tickets", user_id)


# --- tickets ---------------------------------------------------------------


class NewTicket(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `tickets.create`."""

    user_id: str
    summary: str
    description: str
    intent: Intent
    conversation_id: str


class TicketRef(msgspec.Struct, frozen=True, kw_only=True):
    """Result of `tickets.create`: the ticket, and whether this call opened it."""

    ticket_id: str
    created: bool


class TicketLookup(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `tickets.get`."""

    user_id: str
    ticket_id: str


class MaybeTicket(msgspec.Struct, frozen=True, kw_only=True):
    """Result of `tickets.get`: None if there is no such ticket of that user."""

    ticket: Ticket | None


@tool("tickets.create", permission="tickets:write", side_effect=True, owner="user_id")
def create_ticket(args: NewTicket, call: ToolCall) -> TicketRef:
    """Open a ticket for a user (once per request, however often it is retried).

    Raises:
        BadRequest: If the user id is the mark of erased records.
    """
    if args.user_id == ERASED:
        msg = f"{ERASED} is not a user id"
        raise BadRequest(msg)
    # By request and user, not by every argument: a retry whose model wrote
    # another summary must still find the ticket it opened.
    ticket_id = record_id("T", call, args.user_id)
    call.context.erasure_fence(args.user_id).check()
    key = ticket_key(ticket_id)
    text = TicketText(
        summary=args.summary, description=args.description, conversation_id=args.conversation_id
    )
    ticket = StoredTicket(
        id=ticket_id,
        user_id=args.user_id,
        intent=args.intent,
        created_at=time.time(),
        text=seal_value(
            call.context.data_keys, args.user_id, msgspec.msgpack.encode(text), where=key
        ),
    )
    created = call.state.compare_and_set(key, None, msgspec.msgpack.encode(ticket))
    # The user's index lets erasure find the ticket without a scan of them all.
    call.state.put(state_key("tickets", args.user_id, ticket_id), b"")
    return TicketRef(ticket_id=ticket_id, created=created)


@tool("tickets.get", permission="tickets:read", owner="user_id")
def get_ticket(args: TicketLookup, call: ToolCall) -> MaybeTicket:
    """A user's own ticket by id (a redacted one is nobody's)."""
    key = ticket_key(args.ticket_id)
    raw = call.state.get(key)
    stored = None if raw is None else _decode_ticket(raw)
    if isinstance(stored, Ticket):  # written before tickets were sealed
        mine = stored.user_id == args.user_id and stored.redacted_at is None
        return MaybeTicket(ticket=stored if mine else None)
    if stored is None or stored.user_id != args.user_id or stored.text is None:
        return MaybeTicket(ticket=None)  # someone else's ticket is as good as absent
    opened = open_value(call.context.data_keys, stored.text, where=key)
    if opened is None:
        return MaybeTicket(ticket=None)  # its user's key is destroyed: erased
    text = _ticket_text.decode(opened)
    ticket = Ticket(
        id=stored.id,
        user_id=stored.user_id,
        summary=text.summary,
        description=text.description,
        intent=stored.intent,
        conversation_id=text.conversation_id,
        created_at=stored.created_at,
        status=stored.status,
        redacted_at=stored.redacted_at,
    )
    return MaybeTicket(ticket=ticket)


# --- orders and shipments ------------------------------------------------------


class NewOrder(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `orders.create`."""

    customer_id: str
    total_usd: float
    weight_kg: float
    destination: Destination


@tool("orders.create", permission="orders:write", side_effect=True, owner="customer_id")
def create_order(args: NewOrder, call: ToolCall) -> Order:
    """Record an order at a price the pricing rules produced."""
    order = Order(
        id=record_id("O", call, args.customer_id),
        customer_id=args.customer_id,
        total_usd=args.total_usd,
        weight_kg=args.weight_kg,
        destination=args.destination,
        created_at=time.time(),
    )
    return _create_once(call.state, state_key("order", order.id), order)


class ShipmentPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `shipments.plan`."""

    order_id: str
    carrier: str
    service: str
    eta_days: str


class OrderLookup(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `shipments.get`."""

    order_id: str


class MaybeShipment(msgspec.Struct, frozen=True, kw_only=True):
    """Result of `shipments.get`."""

    shipment: Shipment | None


def shipment_key(order_id: str) -> str:
    """Where an order's shipment is stored."""
    return state_key("shipment", order_id)


@tool("shipments.plan", permission="shipments:write", side_effect=True)
def plan_shipment(args: ShipmentPlan, call: ToolCall) -> Shipment:
    """Book the carrier for an order (the first plan for an order stands)."""
    shipment = Shipment(
        order_id=args.order_id,
        carrier=args.carrier,
        service=args.service,
        eta_days=args.eta_days,
        planned_at=time.time(),
    )
    return _create_once(call.state, shipment_key(args.order_id), shipment)


@tool("shipments.get", permission="shipments:read")
def get_shipment(args: OrderLookup, call: ToolCall) -> MaybeShipment:
    """An order's shipment, if one is planned (only for whoever may act for its customer)."""
    order = call.state.get(state_key("order", args.order_id))
    if order is None:
        return MaybeShipment(shipment=None)
    customer = msgspec.msgpack.decode(order, type=Order).customer_id
    call.context.check_acts_for(customer, what="read the shipment of an order")
    raw = call.state.get(shipment_key(args.order_id))
    return MaybeShipment(
        shipment=None if raw is None else msgspec.msgpack.decode(raw, type=Shipment)
    )


def _create_once(state: StateStore, key: str, record: T) -> T:
    """Store `record` unless one is there already; return the stored one.

    Raises:
        Unavailable: If the key keeps changing under us (deleted between
            the failed create and the read).
    """
    for _ in range(_CREATE_ATTEMPTS):
        if state.compare_and_set(key, None, msgspec.msgpack.encode(record)):
            return record
        raw = state.get(key)
        if raw is not None:
            stored: T = msgspec.msgpack.decode(raw, type=type(record))
            return stored
    msg = f"could not create or read {key}"
    raise Unavailable(msg)


# --- erasure -----------------------------------------------------------------


class Erase(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `privacy.erase`."""

    user_id: str


class Erased(msgspec.Struct, frozen=True, kw_only=True):
    """Result of `privacy.erase`."""

    report: ErasureReport
    key_ids: list[str]


@tool("privacy.erase", permission="privacy:erase", owner="user_id")
def erase_user(args: Erase, call: ToolCall) -> Erased:
    """Delete a user's conversation memory, redact their tickets, destroy their data keys.

    In this order: open a new erasure epoch for the user (handlers already
    running for the user then neither write memory back nor make a new data
    key, and one that begins before the erasure is done is told to retry),
    record the erasure in the audit log (before anything is gone, so a
    failure leaves it to a retry to do and record again), erase, then close
    the epoch: what begins after runs normally. Safe to repeat: a second
    erasure finds nothing more to do.
    """
    state, user = call.state, args.user_id
    if not user:
        msg = "erasure needs a user id"
        raise BadRequest(msg)
    epoch = begin_erasure(state, user)
    keys = DataKeys(state)
    memories = state.scan(memory_prefix(user))
    tickets = state.scan(_user_tickets(user))
    key_ids = keys.ids(user)
    report = ErasureReport(
        conversations=len(memories), tickets=len(tickets), keys_destroyed=len(key_ids)
    )
    runtime = call.context.runtime
    if runtime.audit is None and runtime.audit_required:
        msg = "the audit log is not open; the erasure waits until it can be recorded"
        raise Unavailable(msg)
    if runtime.audit is not None:
        runtime.audit.append(
            UserDataErased(
                at=time.time(),
                node=runtime.node,
                request_id=new_message_id(),  # not the caller's id: ids may collide
                key_ids=key_ids,
                conversations=report.conversations,
                tickets=report.tickets,
            )
        )
    for key in memories:
        state.delete(key)
    for index in tickets:
        _redact_ticket(state, index.rsplit(".", 1)[-1])
        state.delete(index)
    keys.destroy(user)
    end_erasure(state, user, epoch)
    return Erased(report=report, key_ids=key_ids)


def _decode_ticket(raw: bytes) -> StoredTicket | Ticket:
    """A stored ticket, or one stored in the clear by a version before sealing."""
    try:
        return _stored_ticket.decode(raw)
    except msgspec.ValidationError:
        return msgspec.msgpack.decode(raw, type=Ticket)


def _redact_ticket(state: StateStore, ticket_id: str) -> None:
    key = ticket_key(ticket_id)
    raw = state.get(key)
    if raw is None:
        return
    # Its text is unreadable once the key is destroyed; drop it all the same,
    # with the owner: nothing the caller chose stays.
    ticket = _decode_ticket(raw)
    redacted = StoredTicket(
        id=ticket.id,
        user_id=ERASED,
        intent=ticket.intent,
        created_at=ticket.created_at,
        text=None,
        status=ticket.status,
        redacted_at=time.time(),
    )
    state.put(key, msgspec.msgpack.encode(redacted))
