"""The support service's contract: requests, replies, state records and domain events."""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar

import msgspec

from actors import SealedValue
from messages import Event, Identifier, Message

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
# Record, customer and conversation ids are bounded identifiers at every edge
# (1-128 of [A-Za-z0-9._:-]), in requests and events alike: they end up in
# state keys.
Id = Identifier
Label = Annotated[str, msgspec.Meta(max_length=200)]
Labels = Annotated[list[Label], msgspec.Meta(max_length=32)]
# A user id is also a URL path segment (DELETE /v1/users/{user_id}/data).
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^/]+$")]
Money = Annotated[float, msgspec.Meta(ge=0, le=10_000_000)]
Months = Annotated[int, msgspec.Meta(ge=1, le=120)]


class Intent(enum.StrEnum):
    """What a support message is about, as the model reads it."""

    ACCOUNT = "account"
    BILLING = "billing"
    TECHNICAL = "technical"
    SHIPPING = "shipping"
    PRICING = "pricing"
    PRIVACY = "privacy"
    OTHER = "other"


# --- support -------------------------------------------------------------


class SupportRequest(Message, frozen=True, kw_only=True):
    """A customer's message to support (the founding article's request).

    Attributes:
        user_id: Who writes.
        message: What they write.
        conversation_id: The conversation it continues; None starts one
            (the reply's conversation is named after the request).
    """

    user_id: UserId
    message: Text
    conversation_id: Id | None = None


class SupportResponse(Message, frozen=True, kw_only=True):
    """Support's answer (the founding article's response).

    Attributes:
        answer: A concise answer.
        ticket_id: The ticket opened for this message, if one was.
        references: Links to the help articles the answer relies on.
        conversation_id: The conversation to continue.
        intent: What the message was taken to be about.
    """

    answer: str
    ticket_id: str | None
    references: list[str]
    conversation_id: str
    intent: Intent = Intent.OTHER


class SupportStep(Message, frozen=True, kw_only=True):
    """A step of the support agent's work, streamed as it happens (`/v1/agents/support/stream`).

    Attributes:
        step: `decided`, `searched` or `ticket`.
        detail: What it found: the intent and plan, the articles, the ticket id.
    """

    step: str
    detail: str


class SupportDecision(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the model decides for a support message (its first output, validated)."""

    intent: Intent
    search_kb: bool
    query: Annotated[str, msgspec.Meta(max_length=200)] = ""
    open_ticket: bool
    ticket_summary: Annotated[str, msgspec.Meta(max_length=200)] = ""


class SupportAnswer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The model's final answer (its second output, validated)."""

    answer: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class Turn(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One exchange kept in conversation memory (`id`: the message it answered)."""

    user: str
    agent: str
    at: float
    id: str = ""


class Memory(msgspec.Struct, kw_only=True):
    """A conversation's memory, opened (expires after the memory TTL)."""

    user_id: str
    turns: list[Turn] = msgspec.field(default_factory=list)


class StoredMemory(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation's memory as the state store keeps it: its turns sealed for the user."""

    user_id: str
    turns: SealedValue


class Ticket(msgspec.Struct, frozen=True, kw_only=True):
    """A support ticket, opened."""

    id: str
    user_id: str
    summary: str
    description: str
    intent: Intent
    conversation_id: str
    created_at: float
    status: str = "open"
    redacted_at: float | None = None


class TicketText(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What a ticket says, the part sealed with its user's data key."""

    summary: str
    description: str
    conversation_id: str


class StoredTicket(msgspec.Struct, frozen=True, kw_only=True):
    """A ticket as the state store keeps it.

    Attributes:
        text: Its `TicketText`, sealed with the user's data key; None once
            the ticket is redacted (then `user_id` is `[erased]`).
    """

    id: str
    user_id: str
    intent: Intent
    created_at: float
    text: SealedValue | None
    status: str = "open"
    redacted_at: float | None = None


class TicketQuery(Message, frozen=True, kw_only=True):
    """Look a ticket up by id (its owner only)."""

    user_id: UserId
    ticket_id: Id


class TicketView(Message, frozen=True, kw_only=True):
    """A ticket as its owner sees it."""

    ticket_id: str
    status: str
    summary: str
    description: str
    intent: Intent
    created_at: float


# --- pricing and orders -------------------------------------------------


class PriceRequest(Message, frozen=True, kw_only=True):
    """Price a contract (the founding article's pricing inputs)."""

    owner_field: ClassVar[str] = "customer_id"  # whose request it is, for the HTTP edge
    customer_id: Id
    base_price_usd: Money
    contract_length_months: Months
    discount_code: Annotated[str, msgspec.Meta(max_length=40)] = ""


class PriceQuote(Message, frozen=True, kw_only=True):
    """The article's output schema: price, discounts applied, and the model's notes."""

    final_price_usd: Annotated[float, msgspec.Meta(ge=0)]
    applied_discounts: list[str]
    notes: str


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """Where an order ships."""

    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
    postcode: Annotated[str, msgspec.Meta(max_length=20)] = ""


class OrderRequest(Message, frozen=True, kw_only=True):
    """Place an order at the quoted price; shipping follows by event."""

    owner_field: ClassVar[str] = "customer_id"
    customer_id: Id
    base_price_usd: Money
    contract_length_months: Months
    discount_code: Annotated[str, msgspec.Meta(max_length=40)] = ""
    weight_kg: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    destination: Destination


class OrderConfirmation(Message, frozen=True, kw_only=True):
    """An order placed (the same one again for a retried request)."""

    order_id: str
    quote: PriceQuote


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """An order as the state store keeps it."""

    id: str
    customer_id: str
    total_usd: float
    weight_kg: float
    destination: Destination
    created_at: float


# --- shipping -------------------------------------------------------------


class ShipmentQuery(Message, frozen=True, kw_only=True):
    """Ask how an order ships.

    Attributes:
        order_id: The order.
        customer_id: Whose order it is: a service names the customer it
            asks for (a user's own key or token fills it in).
    """

    owner_field: ClassVar[str] = "customer_id"
    order_id: Id
    customer_id: Id | None = None


class Shipment(Message, frozen=True, kw_only=True):
    """The carrier chosen for an order."""

    order_id: str
    carrier: str
    service: str
    eta_days: str
    planned_at: float


# --- privacy ----------------------------------------------------------------


class EraseUserData(Message, frozen=True, kw_only=True):
    """Right to be forgotten: erase what is kept about a user."""

    user_id: UserId


class ErasureReport(Message, frozen=True, kw_only=True):
    """What an erasure did (`DELETE /v1/users/{user_id}/data`)."""

    conversations: int
    tickets: int
    keys_destroyed: int


# --- domain events (JetStream, <prefix>.evt.<Name>) --------------------------


class TicketCreated(Event, frozen=True, kw_only=True):
    """A ticket was opened (carries no personal data: analytics read it)."""

    ticket_id: Id
    intent: Intent
    conversation_id: Id


class KBLookupPerformed(Event, frozen=True, kw_only=True):
    """The knowledge base was searched for a support message."""

    query: Label
    results: Labels
    conversation_id: Id


class OrderCreated(Event, frozen=True, kw_only=True):
    """An order was placed; shipping picks a carrier."""

    order_id: Id
    customer_id: Id
    total_usd: float
    weight_kg: float
    destination: Destination


class InvoiceValidated(Event, frozen=True, kw_only=True):
    """An order's invoice amount passed the pricing rules."""

    order_id: Id
    amount_usd: float
    applied_discounts: Labels


class ShipmentPlanned(Event, frozen=True, kw_only=True):
    """Shipping chose a carrier for an order."""

    order_id: Id
    carrier: Label
    service: Label
    eta_days: Label
