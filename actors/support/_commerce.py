"""PricingAgent, ShippingAgent and PrivacyAgent: rules in code, the model only explains."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Final

import msgspec

from actors import Agent, Context, handler
from actors.support._guardrails import ModelOutputInvalid, decode_with_repair
from actors.support._messages import (
    EraseUserData,
    ErasureReport,
    InvoiceValidated,
    OrderConfirmation,
    OrderCreated,
    OrderRequest,
    PriceQuote,
    PriceRequest,
    Shipment,
    ShipmentPlanned,
    ShipmentQuery,
)
from actors.support._prompts import PRICING_EXPLAIN
from actors.support._records import (
    Erase,
    NewOrder,
    OrderLookup,
    ShipmentPlan,
    create_order,
    erase_user,
    get_shipment,
    plan_shipment,
)
from messages import GenerateRequest, NotFound

if TYPE_CHECKING:
    from actors.support._messages import Destination

CONTRACT_MONTHS: Final = 12
CONTRACT_DISCOUNT: Final = 0.10
PROMO_CODE: Final = "SPRING2024"
PROMO_DISCOUNT: Final = 0.05
PRICE_FLOOR_USD: Final = 50.0
_NUMBER: Final = re.compile(r"\d+(?:[.,]\d+)?")
_EXPLAIN_TOKENS: Final = 120


class Notes(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The model's explanation of a price (bounded, so a constrained model always ends it)."""

    notes: Annotated[str, msgspec.Meta(max_length=300)]


def price_contract(
    base_price_usd: float, contract_length_months: int, discount_code: str = ""
) -> tuple[float, list[str]]:
    """The founding article's pricing rules, in code: final price and the discounts applied.

    10% off for contracts of 12 months or more; a further 5% with code
    SPRING2024; discounts never take the price below 50 USD (a base price
    already below it is left alone).
    """
    price, applied = base_price_usd, []
    if contract_length_months >= CONTRACT_MONTHS:
        price *= 1 - CONTRACT_DISCOUNT
        applied.append("10% contract of 12 months or more")
    if discount_code.strip().upper() == PROMO_CODE:
        price *= 1 - PROMO_DISCOUNT
        applied.append(f"5% code {PROMO_CODE}")
    floor = min(base_price_usd, PRICE_FLOOR_USD)
    if price < floor:
        price = floor
        applied.append("raised to the 50 USD minimum")
    return round(price, 2), applied


def _figures(*values: float) -> set[str]:
    return {f"{v:g}" for v in values} | {f"{v:.2f}" for v in values}


def explanation_is_faithful(notes: str, allowed: set[str]) -> bool:
    """Whether every number in the model's notes is one the rules produced."""
    return all(n.replace(",", ".") in allowed for n in _NUMBER.findall(notes))


class PricingAgent(Agent):
    """Prices contracts and places orders; the model writes only the explanation.

    The explanation is checked: if it quotes any figure the rules did not
    produce, the agent replaces it with one written by code.
    """

    agent_type = "pricing"
    permissions = frozenset({"orders:write"})

    @handler
    def quote(self, msg: PriceRequest, ctx: Context) -> PriceQuote:
        """Price a contract."""
        ctx.on_behalf_of(msg.customer_id)
        return self._quote(ctx, msg.base_price_usd, msg.contract_length_months, msg.discount_code)

    @handler
    def order(self, msg: OrderRequest, ctx: Context) -> OrderConfirmation:
        """Place an order at the rules' price; `OrderCreated` starts shipping."""
        ctx.on_behalf_of(msg.customer_id)
        quote = self._quote(ctx, msg.base_price_usd, msg.contract_length_months, msg.discount_code)
        placed = ctx.use(
            create_order,
            NewOrder(
                customer_id=msg.customer_id,
                total_usd=quote.final_price_usd,
                weight_kg=msg.weight_kg,
                destination=msg.destination,
            ),
        )
        ctx.publish_once(
            InvoiceValidated(
                order_id=placed.id,
                amount_usd=placed.total_usd,
                applied_discounts=quote.applied_discounts,
            ),
            message_id=f"InvoiceValidated.{placed.id}",
        )
        ctx.publish_once(
            OrderCreated(
                order_id=placed.id,
                customer_id=placed.customer_id,
                total_usd=placed.total_usd,
                weight_kg=placed.weight_kg,
                destination=placed.destination,
            ),
            message_id=f"OrderCreated.{placed.id}",
        )
        return OrderConfirmation(order_id=placed.id, quote=quote)

    def _quote(self, ctx: Context, base: float, months: int, code: str) -> PriceQuote:
        final, applied = price_contract(base, months, code)
        discounts = ", ".join(applied) or "none"
        prompt = PRICING_EXPLAIN.render(
            base=f"{base:g}",
            months=months,
            code=code or "none",
            final=f"{final:g}",
            discounts=discounts,
        )

        def generate(text: str, output: type[Notes]) -> Notes:
            return ctx.generate(
                GenerateRequest(prompt=text, max_tokens=_EXPLAIN_TOKENS), output=output
            )

        allowed = _figures(base, final, PRICE_FLOOR_USD, months, CONTRACT_MONTHS, 10, 5, 2024)
        try:
            notes = decode_with_repair(generate, prompt, Notes, task=PRICING_EXPLAIN).notes
        except ModelOutputInvalid:
            notes = ""
        if not notes or not explanation_is_faithful(notes, allowed):
            notes = f"Base price {base:g} USD; {discounts}; final price {final:g} USD."
        return PriceQuote(final_price_usd=final, applied_discounts=applied, notes=notes)


def choose_carrier(weight_kg: float, destination: Destination) -> tuple[str, str, str]:
    """Carrier, service and delivery estimate for an order (the help centre's rules)."""
    if weight_kg > 30:  # noqa: PLR2004 - freight limit, as published
        return "Freightline", "freight", "5-10"
    if weight_kg < 2 and destination.country in EU_COUNTRIES:  # noqa: PLR2004 - parcel limit
        return "PostNord", "parcel", "3-5"
    return "DHL Express", "express", "1-3"


EU_COUNTRIES: Final = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
    ]
)


class ShippingAgent(Agent):
    """Chooses a carrier when an order is created, and says how an order ships."""

    agent_type = "shipping"
    permissions = frozenset({"shipments:write", "shipments:read"})

    @handler
    def order_created(self, event: OrderCreated, ctx: Context) -> None:
        """Plan the shipment (once, however often the event is delivered) and announce it."""
        carrier, service, eta = choose_carrier(event.weight_kg, event.destination)
        shipment = ctx.use(
            plan_shipment,
            ShipmentPlan(order_id=event.order_id, carrier=carrier, service=service, eta_days=eta),
        )
        ctx.publish_once(
            ShipmentPlanned(
                order_id=shipment.order_id,
                carrier=shipment.carrier,
                service=shipment.service,
                eta_days=shipment.eta_days,
            ),
            message_id=f"ShipmentPlanned.{shipment.order_id}",
        )

    @handler
    def shipment(self, msg: ShipmentQuery, ctx: Context) -> Shipment:
        """How an order ships."""
        found = ctx.use(get_shipment, OrderLookup(order_id=msg.order_id)).shipment
        if found is None:
            message = f"no shipment planned for order {msg.order_id} (yet)"
            raise NotFound(message)
        return found


class PrivacyAgent(Agent):
    """Right to be forgotten: erases a user's data and records that it did, without PII."""

    agent_type = "privacy"
    permissions = frozenset({"privacy:erase"})

    @handler
    def erase(self, msg: EraseUserData, ctx: Context) -> ErasureReport:
        """Erase (the tool records the erasure in the audit log first, without the user id)."""
        return ctx.use(erase_user, Erase(user_id=msg.user_id)).report
