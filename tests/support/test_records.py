"""The record tools on their own: idempotent creation, unguessable ids, owners, erasure."""

from __future__ import annotations

import hashlib
import time

import msgspec
import pytest

from actors import (
    Agent,
    Context,
    DataKeys,
    MemoryStore,
    Runtime,
    begin_erasure,
    handler,
    open_value,
    state_key,
)
from actors.support import Intent, StoredTicket, Ticket, create_ticket, erase_user, get_ticket
from actors.support._records import ERASED, Erase, NewTicket, TicketLookup, ticket_key
from messages import Forbidden, Message, Metadata, Principal, Scope, Unavailable

TICKET = NewTicket(
    user_id="jane",
    summary="s",
    description="my card 4111",
    intent=Intent.BILLING,
    conversation_id="c1",
)


class OpenTicket(Message, frozen=True, kw_only=True):
    erase_first: bool = False
    user_id: str = "jane"


class ReadTicket(Message, frozen=True, kw_only=True):
    user_id: str
    ticket_id: str


class Found(Message, frozen=True, kw_only=True):
    summary: str | None


class Opened(Message, frozen=True, kw_only=True):
    ticket_id: str
    created: bool


class ClerkAgent(Agent):
    agent_type = "clerk"
    permissions = frozenset({"tickets:write", "tickets:read", "privacy:erase"})

    @handler
    def open(self, msg: OpenTicket, ctx: Context) -> Opened:
        if msg.erase_first:  # an erasure landing while this handler runs
            begin_erasure(ctx.state, "jane")
        ref = ctx.use(create_ticket, msgspec.structs.replace(TICKET, user_id=msg.user_id))
        return Opened(ticket_id=ref.ticket_id, created=ref.created)

    @handler
    def read(self, msg: ReadTicket, ctx: Context) -> Found:
        found = ctx.use(get_ticket, TicketLookup(user_id=msg.user_id, ticket_id=msg.ticket_id))
        return Found(summary=None if found.ticket is None else found.ticket.summary)

    @handler
    def erase(self, msg: Erase, ctx: Context) -> Opened:
        ctx.use(erase_user, msg)
        return Opened(ticket_id="", created=False)


def acting_as(name: str, scope: Scope, user: str | None = None) -> Metadata:
    principal = Principal(name=name, scope=scope, user=user)
    return Metadata(id="m1", deadline=time.time() + 5, principal=principal)


@pytest.fixture
def clerk(runtime: Runtime) -> Agent:
    runtime.state = MemoryStore()
    return ClerkAgent.spawn(runtime)  # type: ignore[return-value]


def test_a_ticket_is_created_once_per_request(clerk: Agent, runtime: Runtime) -> None:
    first = clerk.ask(OpenTicket(), message_id="r1", timeout=2)  # type: ignore[attr-defined]
    again = clerk.ask(OpenTicket(), message_id="r1", timeout=2)  # type: ignore[attr-defined]
    other = clerk.ask(OpenTicket(), message_id="r2", timeout=2)  # type: ignore[attr-defined]
    assert (first.ticket_id, first.created) == (again.ticket_id, True)
    assert other.ticket_id != first.ticket_id
    assert runtime.state is not None
    assert len(runtime.state.scan(state_key("tickets", "jane"))) == 2


def test_no_ticket_is_opened_for_a_user_erased_during_the_request(
    clerk: Agent, runtime: Runtime
) -> None:
    with pytest.raises(Unavailable, match="erased while this request ran"):
        clerk.ask(OpenTicket(erase_first=True), timeout=2)  # type: ignore[attr-defined]
    assert runtime.state is not None
    assert runtime.state.scan("ticket") == []
    assert runtime.state.scan(state_key("tickets", "jane")) == []


def test_erasure_needs_an_audit_log_when_one_is_required(clerk: Agent, runtime: Runtime) -> None:
    clerk.ask(OpenTicket(), timeout=2)  # type: ignore[attr-defined]
    runtime.audit_required = True

    class Eraser(Agent):
        agent_type = "eraser"
        permissions = frozenset({"privacy:erase"})

        @handler
        def erase(self, msg: OpenTicket, ctx: Context) -> Opened:
            ctx.use(erase_user, Erase(user_id="jane"))
            return Opened(ticket_id="", created=False)

    with pytest.raises(Unavailable, match="audit log is not open"):
        Eraser.spawn(runtime).ask(OpenTicket(), timeout=2)
    assert runtime.state is not None
    assert len(runtime.state.scan(state_key("tickets", "jane"))) == 1  # nothing erased


def test_a_ticket_id_cannot_be_computed_from_the_request_and_the_user(
    clerk: Agent, runtime: Runtime
) -> None:
    opened = clerk.ask(OpenTicket(), message_id="r1", timeout=2)  # type: ignore[attr-defined]
    # What the id was before: anyone knowing "r1" and "jane" could compute it.
    guessable = hashlib.sha256(b"r1|jane").hexdigest()[:12].upper()
    assert opened.ticket_id != f"T-{guessable}"
    assert guessable not in opened.ticket_id
    runtime.state = MemoryStore()  # another deployment: another secret
    elsewhere = clerk.ask(OpenTicket(), message_id="r1", timeout=2)  # type: ignore[attr-defined]
    assert elsewhere.ticket_id != opened.ticket_id


def test_a_user_principal_can_neither_open_nor_read_another_users_ticket(
    clerk: Agent,
) -> None:
    opened = clerk.ask(OpenTicket(), timeout=2)  # type: ignore[attr-defined]
    mallory = acting_as("mallory-key", Scope.USER, "mallory")
    with pytest.raises(Forbidden, match=r"mallory-key may not call tickets\.get"):
        clerk.ask(ReadTicket(user_id="jane", ticket_id=opened.ticket_id), cause=mallory, timeout=2)  # type: ignore[attr-defined]
    with pytest.raises(Forbidden, match=r"tickets\.create"):
        clerk.ask(OpenTicket(), cause=mallory, timeout=2)  # type: ignore[attr-defined]
    with pytest.raises(Forbidden, match=r"privacy\.erase"):
        clerk.ask(Erase(user_id="jane"), cause=mallory, timeout=2)  # type: ignore[attr-defined]
    jane = acting_as("jane-key", Scope.USER, "jane")
    own = clerk.ask(ReadTicket(user_id="jane", ticket_id=opened.ticket_id), cause=jane, timeout=2)  # type: ignore[attr-defined]
    assert own.summary == "s"
    admin = acting_as("ops", Scope.ADMIN)
    seen = clerk.ask(ReadTicket(user_id="jane", ticket_id=opened.ticket_id), cause=admin, timeout=2)  # type: ignore[attr-defined]
    assert seen.summary == "s"


def test_a_redacted_ticket_keeps_nothing_the_caller_chose_and_is_nobodys(
    clerk: Agent, runtime: Runtime
) -> None:
    opened = clerk.ask(OpenTicket(), timeout=2)  # type: ignore[attr-defined]
    clerk.ask(Erase(user_id="jane"), timeout=2)  # type: ignore[attr-defined]
    assert runtime.state is not None
    raw = runtime.state.get(ticket_key(opened.ticket_id))
    assert raw is not None
    stored = msgspec.msgpack.decode(raw, type=StoredTicket)
    assert (stored.user_id, stored.text) == (ERASED, None)
    # The mark of erased records is no user: it reads nothing, and opens nothing.
    lookup = ReadTicket(user_id=ERASED, ticket_id=opened.ticket_id)
    assert clerk.ask(lookup, timeout=2).summary is None  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="not a user id"):
        clerk.ask(OpenTicket(user_id=ERASED), timeout=2)  # type: ignore[attr-defined]


def test_a_copy_of_a_ticket_taken_before_erasure_cannot_be_read_after_it(
    clerk: Agent, runtime: Runtime
) -> None:
    opened = clerk.ask(OpenTicket(), timeout=2)  # type: ignore[attr-defined]
    assert runtime.state is not None
    key = ticket_key(opened.ticket_id)
    backup = runtime.state.get(key)  # a replica, a backup, the bucket's history
    assert backup is not None
    assert b"4111" not in backup  # sealed at rest with jane's data key
    sealed = msgspec.msgpack.decode(backup, type=StoredTicket).text
    assert sealed is not None
    assert open_value(DataKeys(runtime.state), sealed, where=key) is not None
    # Bound to where it is kept: it does not open as another record.
    assert open_value(DataKeys(runtime.state), sealed, where=ticket_key("T-OTHER")) is None
    clerk.ask(Erase(user_id="jane"), timeout=2)  # type: ignore[attr-defined]
    assert open_value(DataKeys(runtime.state), sealed, where=key) is None


def test_a_ticket_kept_in_the_clear_by_an_earlier_version_is_still_read_and_redacted(
    clerk: Agent, runtime: Runtime
) -> None:
    assert runtime.state is not None
    legacy = Ticket(
        id="T-OLD",
        user_id="jane",
        summary="old",
        description="my card 4111",
        intent=Intent.BILLING,
        conversation_id="c0",
        created_at=1.0,
    )
    runtime.state.put(ticket_key("T-OLD"), msgspec.msgpack.encode(legacy))
    runtime.state.put(state_key("tickets", "jane", "T-OLD"), b"")
    assert clerk.ask(ReadTicket(user_id="jane", ticket_id="T-OLD"), timeout=2).summary == "old"  # type: ignore[attr-defined]
    clerk.ask(Erase(user_id="jane"), timeout=2)  # type: ignore[attr-defined]
    raw = runtime.state.get(ticket_key("T-OLD"))
    assert raw is not None
    assert b"4111" not in raw
    assert msgspec.msgpack.decode(raw, type=StoredTicket).user_id == ERASED
