"""The record tools on their own: idempotent creation and the erasure fence."""

from __future__ import annotations

import pytest

from actors import Agent, Context, MemoryStore, Runtime, begin_erasure, handler, state_key
from actors.support import Intent, create_ticket, erase_user
from actors.support._records import Erase, NewTicket
from messages import Message, Unavailable

TICKET = NewTicket(
    user_id="jane",
    summary="s",
    description="my card 4111",
    intent=Intent.BILLING,
    conversation_id="c1",
)


class OpenTicket(Message, frozen=True, kw_only=True):
    erase_first: bool = False


class Opened(Message, frozen=True, kw_only=True):
    ticket_id: str
    created: bool


class ClerkAgent(Agent):
    agent_type = "clerk"
    permissions = frozenset({"tickets:write", "privacy:erase"})

    @handler
    def open(self, msg: OpenTicket, ctx: Context) -> Opened:
        if msg.erase_first:  # an erasure landing while this handler runs
            begin_erasure(ctx.state, "jane")
        ref = ctx.use(create_ticket, TICKET)
        return Opened(ticket_id=ref.ticket_id, created=ref.created)


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
