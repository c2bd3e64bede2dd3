"""The agent request/reply protocol: metadata and the typed error reply."""

from __future__ import annotations

import msgspec

from messages._base import Message, Priority
from messages._errors import ERRORS_BY_CODE, AgentError, ErrorCode, InternalError
from messages._principal import Principal


class Metadata(msgspec.Struct, frozen=True, kw_only=True):
    """What travels beside a message (in NATS headers, never in the body).

    Attributes:
        id: Message id; a retry reuses it so side effects stay idempotent.
        deadline: Absolute deadline, seconds since the epoch.
        correlation_id: Id of the request that caused this one, if any.
        priority: Load-shedding priority.
        sender: Who sent it (agent type and instance, or a client name).
        traceparent: W3C trace context parent, if traced.
        tracestate: W3C trace state, if any.
        delivery: How many times this message has been delivered (1 for
            requests; JetStream's delivery count for events).
        principal: Who the request acts for, as an edge authenticated it;
            None inside the trust boundary (`messages.Principal`).
    """

    id: str
    deadline: float
    correlation_id: str | None = None
    priority: Priority = Priority.DEFAULT
    sender: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    delivery: int = 1
    principal: Principal | None = None


class ErrorReply(Message, frozen=True, kw_only=True):
    """A typed failure sent in place of a reply.

    Attributes:
        code: What kind of failure.
        message: Text safe to show a client (never a stack trace).
        retry_after: Seconds after which a retry may succeed, when known.
    """

    code: ErrorCode
    message: str
    retry_after: float | None = None

    @classmethod
    def from_error(cls, error: AgentError) -> ErrorReply:
        """Build the reply that carries `error` over the wire."""
        return cls(code=error.code, message=error.message, retry_after=error.retry_after)

    def to_error(self) -> AgentError:
        """Return the exception that this reply stands for on the caller's side."""
        error_type = ERRORS_BY_CODE.get(self.code, InternalError)
        return error_type(self.message, retry_after=self.retry_after)
