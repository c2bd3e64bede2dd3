"""SupportAgent: reads intent, searches the knowledge base, opens tickets, answers."""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import msgspec

from actors import Agent, Context, handler, open_value, seal_value
from actors.support._guardrails import OutputPolicy, PolicyRule, decode_with_repair
from actors.support._kb import Search, search_kb
from actors.support._messages import (
    KBLookupPerformed,
    Memory,
    StoredMemory,
    SupportAnswer,
    SupportDecision,
    SupportRequest,
    SupportResponse,
    SupportStep,
    TicketCreated,
    TicketQuery,
    TicketView,
    Turn,
)
from actors.support._prompts import SUPPORT_ANSWER, SUPPORT_DECIDE, escape_user_text
from actors.support._records import (
    NewTicket,
    TicketLookup,
    create_ticket,
    get_ticket,
    memory_key,
)
from messages import GenerateRequest, NotFound, Sampling, Unavailable

if TYPE_CHECKING:
    from actors import Runtime

T = TypeVar("T")

_SEED_MASK: Final = 0x7FFFFFFF
_MEMORY_ATTEMPTS: Final = 5
_EVENT_DIGITS: Final = 24
_memory_decoder: Final = msgspec.msgpack.Decoder(StoredMemory)
_turns_decoder: Final = msgspec.msgpack.Decoder(list[Turn])
_turns_encoder: Final = msgspec.msgpack.Encoder().encode
_TURN_CHARS: Final = 300


class SupportOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[[pools]] options` of the support agent.

    Attributes:
        tier: The model tier to ask first (a smaller one may answer under load).
        max_tokens: Most tokens per model output.
        temperature: Sampling temperature (each request is seeded by its id,
            so a retry decides the same way).
        memory_ttl: Seconds a conversation is remembered after its last message.
        memory_turns: Exchanges of the conversation shown to the model.
        policy: Output policy rules (None: the built-in ones).
    """

    tier: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 256
    temperature: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.2
    memory_ttl: Annotated[float, msgspec.Meta(gt=0)] = 7 * 24 * 3600.0
    memory_turns: Annotated[int, msgspec.Meta(ge=0)] = 6
    policy: list[PolicyRule] | None = None

    def __post_init__(self) -> None:
        for rule in self.policy or ():
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                msg = f"policy rule {rule.name!r}: {exc}"
                raise ValueError(msg) from exc


class SupportAgent(Agent):
    """The founding article's support agent, on the framework's guardrails.

    For each message: the model decides (intent, search, ticket) from a
    fenced prompt; the runtime checks each tool call; the model answers from
    what the tools found; the answer passes the output policy; the exchange
    joins the conversation's memory in the state store.
    """

    agent_type = "support"
    permissions = frozenset({"kb:read", "tickets:write"})
    options_type = SupportOptions
    chunk_type = SupportStep

    def __init__(
        self,
        runtime: Runtime,
        *,
        instance: str | None = None,
        options: SupportOptions | None = None,
    ) -> None:
        super().__init__(runtime, instance=instance)
        self.options = options or SupportOptions()
        rules = self.options.policy
        self.policy = OutputPolicy() if rules is None else OutputPolicy(rules)

    @handler
    def support(self, msg: SupportRequest, ctx: Context) -> SupportResponse:
        """Answer a customer's message, with references and a ticket when one is needed."""
        conversation = msg.conversation_id or ctx.metadata.id
        ctx.on_behalf_of(msg.user_id, conversation)
        remembered = memory_key(msg.user_id, conversation)
        raw_memory = ctx.state.get(remembered)
        memory = _memory_of(ctx, remembered, raw_memory, msg.user_id)
        decision = decode_with_repair(
            self._generator(ctx),
            SUPPORT_DECIDE.render(
                history=history_of(memory, ctx.metadata.id, self.options.memory_turns),
                message=msg.message,
            ),
            SupportDecision,
            task=SUPPORT_DECIDE,
        )
        plan = [
            p for p, on in (("search", decision.search_kb), ("ticket", decision.open_ticket)) if on
        ]
        ctx.emit(
            SupportStep(step="decided", detail=f"{decision.intent}: {', '.join(plan) or 'answer'}")
        )
        references: list[str] = []
        titles: list[str] = []
        if decision.search_kb:
            hits = ctx.use(search_kb, Search(query=decision.query or msg.message)).hits
            references, titles = [h.url for h in hits], [h.title for h in hits]
            ctx.emit(SupportStep(step="searched", detail="; ".join(titles) or "nothing found"))
            # The event keeps the model's search words, never the raw message:
            # the event stream outlives an erasure.
            ctx.publish_once(
                KBLookupPerformed(
                    query=decision.query, results=references, conversation_id=conversation
                ),
                message_id=f"KBLookupPerformed.{_event_id(ctx, msg.user_id)}",
            )
        ticket_id = None
        if decision.open_ticket:
            ticket_id = self._open_ticket(ctx, msg, decision, conversation)
            ctx.emit(SupportStep(step="ticket", detail=ticket_id))
        answer = decode_with_repair(
            self._generator(ctx),
            SUPPORT_ANSWER.render(
                articles="; ".join(titles) or "none",
                intent=decision.intent,
                ticket=ticket_id or "none",
                message=msg.message,
            ),
            SupportAnswer,
            task=SUPPORT_ANSWER,
        )
        text = self.policy.apply(answer.answer).text
        turn = Turn(user=msg.message[:_TURN_CHARS], agent=text, at=time.time(), id=ctx.metadata.id)
        self._remember(ctx, remembered, msg.user_id, turn, raw_memory)
        return SupportResponse(
            answer=text,
            ticket_id=ticket_id,
            references=references,
            conversation_id=conversation,
            intent=decision.intent,
        )

    def _open_ticket(
        self, ctx: Context, msg: SupportRequest, decision: SupportDecision, conversation: str
    ) -> str:
        ref = ctx.use(
            create_ticket,
            NewTicket(
                user_id=msg.user_id,
                summary=decision.ticket_summary or f"{decision.intent} request",
                description=msg.message,
                intent=decision.intent,
                conversation_id=conversation,
            ),
        )
        # Published under the ticket's id unless an attempt already did: a
        # retry after a crash between the ticket and its event publishes it.
        ctx.publish_once(
            TicketCreated(
                ticket_id=ref.ticket_id, intent=decision.intent, conversation_id=conversation
            ),
            message_id=f"TicketCreated.{ref.ticket_id}",
        )
        return ref.ticket_id

    def _remember(
        self, ctx: Context, key: str, user_id: str, turn: Turn, raw: bytes | None
    ) -> None:
        """Append the exchange to the conversation's memory, once, without losing others'.

        `raw` is the memory as read when the message began: the first
        compare-and-set expects it, and only a lost race reads again. An
        erasure is checked after writing (and the write undone), which also
        covers one that ran before it.
        """
        for attempt in range(_MEMORY_ATTEMPTS):
            if attempt:
                raw = ctx.state.get(key)
            memory = _memory_of(ctx, key, raw, user_id)
            if any(t.id == turn.id for t in memory.turns):
                return  # a retry of a message already remembered
            memory.turns.append(turn)
            del memory.turns[: -self.options.memory_turns or None]
            encoded = _stored_memory(ctx, key, memory)
            if ctx.state.compare_and_set(key, raw, encoded, ttl=self.options.memory_ttl):
                if ctx.erasure_fence(user_id).broken():
                    # Forgotten while this ran: the answer goes out, nothing is kept.
                    ctx.state.delete(key)
                return
        msg = "the conversation's memory kept changing; send the message again"
        raise Unavailable(msg)

    def _generator(self, ctx: Context) -> _Generate:
        return _Generate(ctx, self.options)


class _Generate:
    """Prompt -> text through the pool, seeded by the request so retries decide alike."""

    def __init__(self, ctx: Context, options: SupportOptions) -> None:
        self.ctx = ctx
        self.options = options

    def __call__(self, prompt: str, output: type[T]) -> T:
        request = GenerateRequest(
            prompt=prompt,
            max_tokens=self.options.max_tokens,
            sampling=Sampling(temperature=self.options.temperature),
            seed=zlib.crc32(self.ctx.metadata.id.encode()) & _SEED_MASK,
            tier=self.options.tier,
        )
        return self.ctx.generate(request, output=output)


class TicketsAgent(Agent):
    """Shows customers their own tickets (read-only)."""

    agent_type = "tickets"
    permissions = frozenset({"tickets:read"})

    @handler
    def ticket(self, msg: TicketQuery, ctx: Context) -> TicketView:
        """A customer's own ticket; another user's ticket is not found."""
        found = ctx.use(get_ticket, TicketLookup(user_id=msg.user_id, ticket_id=msg.ticket_id))
        if found.ticket is None:
            message = f"no ticket {msg.ticket_id} for this user"
            raise NotFound(message)
        t = found.ticket
        return TicketView(
            ticket_id=t.id,
            status=t.status,
            summary=t.summary,
            description=t.description,
            intent=t.intent,
            created_at=t.created_at,
        )


def _event_id(ctx: Context, user_id: str) -> str:
    """An event id per request and user (request ids are the callers' and may collide)."""
    return hashlib.sha256(f"{ctx.metadata.id}|{user_id}".encode()).hexdigest()[:_EVENT_DIGITS]


def history_of(memory: Memory, message_id: str, turns: int) -> str:
    """The last `turns` exchanges for a prompt, each part tagged and escaped.

    The turn of `message_id` itself is left out: a retry must see the
    conversation as its first attempt did, or it may decide otherwise.
    """
    earlier = [t for t in memory.turns if t.id != message_id]
    shown = earlier[-turns:] if turns else []
    return (
        "".join(
            f"<customer>{escape_user_text(t.user)}</customer>"
            f"<agent>{escape_user_text(t.agent)}</agent>"
            for t in shown
        )
        or "none"
    )


def _memory_of(ctx: Context, key: str, raw: bytes | None, user_id: str) -> Memory:
    """The memory stored as `raw` under `key`, opened (empty if none, or erased)."""
    if raw is None:
        return Memory(user_id=user_id)
    try:
        stored = _memory_decoder.decode(raw)
    except msgspec.ValidationError:  # kept in the clear by a version before sealing
        return msgspec.msgpack.decode(raw, type=Memory)
    opened = open_value(ctx.data_keys, stored.turns, where=key)
    turns = [] if opened is None else _turns_decoder.decode(opened)
    return Memory(user_id=stored.user_id, turns=turns)


def _stored_memory(ctx: Context, key: str, memory: Memory) -> bytes:
    turns = seal_value(ctx.data_keys, memory.user_id, _turns_encoder(memory.turns), where=key)
    return msgspec.msgpack.encode(StoredMemory(user_id=memory.user_id, turns=turns))
