"""The error tree every actorfleet failure belongs to.

A failure raised by an agent on this node or on another one reaches the caller
as an instance of one of these classes; on the wire it travels as an
`ErrorReply` carrying the same `ErrorCode`::

    ActorfleetError
    ├── AgentError                  (has a wire code; travels as ErrorReply)
    │   ├── BadRequest              bad_request
    │   │   ├── PayloadTooLarge     over the transport's size limit; never sent
    │   │   └── InvalidKey          a state key no store can keep
    │   ├── Forbidden               forbidden
    │   ├── NotFound                not_found
    │   ├── Overloaded              overloaded (retry_after)
    │   ├── RequestTimeout          timeout (also a TimeoutError)
    │   ├── Unavailable             unavailable
    │   │   ├── AgentStopped        the agent died with the request queued or running
    │   │   └── OutputInvalid       a generation's text is not the JSON its schema asks for
    │   └── InternalError           internal
    ├── ConfigError                 bad configuration, with the key path
    ├── AgentDefinitionError        an Agent subclass is declared wrongly
    └── SupervisorError
        ├── ChildAlreadyExists
        ├── ChildNotFound
        ├── StartFailed
        └── SupervisorStopped
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final

_KEY_SHOWN: Final = 64


class ErrorCode(enum.StrEnum):
    """The codes an `ErrorReply` can carry."""

    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ActorfleetError(Exception):
    """Raised for any failure that actorfleet itself reports."""


class AgentError(ActorfleetError):
    """Raised when a request to an agent fails; the base of every wire error.

    Attributes:
        code: The wire code this error travels as.
        message: Human-readable text, safe to show to a client.
        retry_after: Seconds after which a retry may succeed, when known.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.retry_after))


def _rebuild(cls: type[AgentError], message: str, retry_after: float | None) -> AgentError:
    error = cls.__new__(cls)
    AgentError.__init__(error, message, retry_after=retry_after)
    return error


class BadRequest(AgentError):
    """Raised when a request is malformed or of a type the agent does not handle."""

    code = ErrorCode.BAD_REQUEST


class InvalidKey(BadRequest):
    """Raised when a state key is too long or not dot-separated tokens of `[A-Za-z0-9_=-]`.

    Every state store refuses such a key before it reaches the backend (a
    JetStream KV key is a subject: a long or malformed one would make the
    server drop the connection). Build keys with `actors.state_key`, which
    never makes one.

    Attributes:
        key: The refused key, cut to its first 64 characters.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key[:_KEY_SHOWN]
        self.reason = reason
        more = "..." if len(key) > _KEY_SHOWN else ""
        super().__init__(f"state key {self.key!r}{more} {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key, self.reason))


class PayloadTooLarge(BadRequest):
    """Raised before sending a message larger than the transport accepts.

    Attributes:
        size: Encoded size in bytes.
        limit: The largest payload the transport accepts.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.size, self.limit))


class Forbidden(AgentError):
    """Raised when the caller may not do what it asked."""

    code = ErrorCode.FORBIDDEN


class NotFound(AgentError):
    """Raised when the agent type or the entity asked for does not exist."""

    code = ErrorCode.NOT_FOUND


class Overloaded(AgentError):
    """Raised when the request was refused to protect the service; see `retry_after`."""

    code = ErrorCode.OVERLOADED


class RequestTimeout(AgentError, TimeoutError):
    """Raised when a request's deadline passed before it was answered."""

    code = ErrorCode.TIMEOUT


class Unavailable(AgentError):
    """Raised when no agent could take the request (none running, none responding)."""

    code = ErrorCode.UNAVAILABLE


class OutputInvalid(Unavailable):
    """Raised when a generation's text is not the JSON value its output schema asks for.

    A constrained engine produces only valid JSON, so this means the text was
    cut (by `max_tokens` or a stop string), the server ignored the schema, or
    no scripted rule answers with that type. It is `unavailable` (retryable):
    the request itself was fine.

    Attributes:
        output: The name of the type asked for.
        text: The text that was produced (possibly long; shown cut).
    """

    def __init__(self, output: str, error: str, *, text: str = "") -> None:
        self.output = output
        self.error = error
        self.text = text
        super().__init__(f"the generated text is not a valid {output}: {error}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.output, self.error), {"text": self.text})


class AgentStopped(Unavailable):
    """Raised when the agent holding the request died before answering it.

    The request was either queued or being handled; it is safe to retry with
    the same message id, which makes side effects idempotent.
    """

    def __init__(self, agent: str, reason: str) -> None:
        self.agent = agent
        self.reason = reason
        super().__init__(f"agent {agent} stopped ({reason}) before answering")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.agent, self.reason))


class InternalError(AgentError):
    """Raised when the agent failed in a way it did not anticipate (it crashed)."""

    code = ErrorCode.INTERNAL


ERRORS_BY_CODE: Final[dict[ErrorCode, type[AgentError]]] = {
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.TIMEOUT: RequestTimeout,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: InternalError,
}


class ConfigError(ActorfleetError):
    """Raised when configuration is invalid; names the key path and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"invalid configuration at {path}: {reason}")


class AgentDefinitionError(ActorfleetError, TypeError):
    """Raised when an `Agent` subclass declares its handlers wrongly."""


class SupervisorError(ActorfleetError):
    """Raised when a supervisor cannot do what it was asked."""


class ChildAlreadyExists(SupervisorError):
    """Raised when a child is started under an id that the supervisor already has."""

    def __init__(self, supervisor: str, child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(f"supervisor {supervisor} already has a child {child_id!r}")


class ChildNotFound(SupervisorError):
    """Raised when a supervisor is asked about a child id it does not have."""

    def __init__(self, supervisor: str, child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(f"supervisor {supervisor} has no child {child_id!r}")


class StartFailed(SupervisorError):
    """Raised when a child (or a supervisor's initial children) could not be started."""

    def __init__(self, what: str, cause: str) -> None:
        self.what = what
        self.cause = cause
        super().__init__(f"could not start {what}: {cause}")


class SupervisorStopped(SupervisorError):
    """Raised when a call reaches a supervisor that has already stopped."""

    def __init__(self, supervisor: str) -> None:
        self.supervisor = supervisor
        super().__init__(f"supervisor {supervisor} has stopped")
