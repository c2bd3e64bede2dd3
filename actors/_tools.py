"""Tools: typed plugins agents call through `ctx.use`, with permissions the runtime enforces.

A tool declares the permission it needs (`tickets:write`), its argument and
result types, and whether it has side effects. On every call the runtime
checks that the calling agent's type holds the permission (RBAC: granted
by the agent class's `permissions`, or by `pools[].permissions` in the
config), validates the arguments and the result with msgspec, and for a
side-effecting tool hands out an idempotency key derived from the message
being handled and keeps the result: a retried request (same message id)
gets the first call's result back instead of a second side effect.

The stored result is a replay, not a lock: two attempts of one request
running at once, or one that crashed between acting and storing, may both
run the tool. A side-effecting tool must therefore itself be idempotent on
`call.key` (or on ids derived from the request, as the support service's
are: records are created with compare-and-set).
"""

from __future__ import annotations

import hashlib
import inspect
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import msgspec
from opentelemetry.trace import SpanKind, StatusCode

from actors._state import state_key
from messages import (
    AgentDefinitionError,
    AgentError,
    BadRequest,
    Forbidden,
    InternalError,
    check_acts_for,
)

if TYPE_CHECKING:
    from actors._context import Context
    from actors._ports import StateStore

A = TypeVar("A")
R = TypeVar("R")

# How long a side-effecting tool's result is kept for retries of its request.
RESULT_TTL: Final = 7 * 24 * 3600.0
_PARAMETERS: Final = 2  # (args, call)
_DIGEST: Final = 16


@dataclass(frozen=True, slots=True)
class ToolCall:
    """What a tool gets besides its arguments.

    Attributes:
        context: The calling agent's context (state, publish, deadline, ...).
        key: Idempotency key of this call: the same for a retry of the
            request being handled with the same arguments, different for
            each call within it and for other arguments.
    """

    context: Context
    key: str

    @property
    def state(self) -> StateStore:
        """The node's state store."""
        return self.context.state


@dataclass(frozen=True, slots=True)
class Tool(Generic[A, R]):
    """A typed capability behind a permission. Make one with `@tool`.

    Attributes:
        name: Dotted name (`tickets.create`), unique per service.
        permission: What an agent type must hold to call it.
        args: The argument type (a msgspec Struct).
        result: The result type.
        side_effect: Whether calls change the world (then they are made
            idempotent by the message being handled).
        fn: The implementation, `(args, call) -> result`.
        description: What it does, for prompts and docs.
        owner: The argument naming the user whose data a call touches;
            the runtime refuses a call for another user than the request's
            principal acts for (`messages.check_acts_for`). None: no user's.
    """

    name: str
    permission: str
    args: type[A]
    result: type[R]
    side_effect: bool
    fn: Callable[[A, ToolCall], R]
    description: str = ""
    owner: str | None = None

    def invoke(self, ctx: Context, args: A | dict[str, Any], ordinal: int) -> R:
        """Make the `ordinal`-th tool call of the message `ctx` handles (`ctx.use`).

        Raises:
            Forbidden: If the calling agent's type lacks the tool's permission,
                or the request's principal may not act for its owner.
            BadRequest: If the arguments do not fit the tool's argument type.
            InternalError: If the tool returns something not of its result type.
        """
        return call_tool(ctx, self, args, ordinal)


def tool(
    name: str, *, permission: str, side_effect: bool = False, owner: str | None = None
) -> Callable[[Callable[[A, ToolCall], R]], Tool[A, R]]:
    """Make a `Tool` of a function `(args: A, call: ToolCall) -> R`; types from its annotations.

    `owner` names the argument holding the user whose data the tool reads
    or changes (`user_id`); calls are then checked against the principal.
    """

    def wrap(fn: Callable[[A, ToolCall], R]) -> Tool[A, R]:
        params = list(inspect.signature(fn).parameters)
        hints = typing.get_type_hints(fn)
        if len(params) != _PARAMETERS or params[0] not in hints or "return" not in hints:
            msg = f"tool {name}: annotate (args: A, call: ToolCall) -> R"
            raise AgentDefinitionError(msg)
        fields = getattr(hints[params[0]], "__struct_fields__", ())
        if owner is not None and owner not in fields:
            msg = f"tool {name}: owner {owner!r} is not a field of its arguments"
            raise AgentDefinitionError(msg)
        return Tool(
            name=name,
            permission=permission,
            args=hints[params[0]],
            result=hints["return"],
            side_effect=side_effect,
            fn=fn,
            description=inspect.getdoc(fn) or "",
            owner=owner,
        )

    return wrap


def call_tool(ctx: Context, used: Tool[A, R], args: A | dict[str, Any], ordinal: int) -> R:
    """Check permission, validate, run (once per request for side effects), validate.

    Raises:
        Forbidden: If the calling agent's type lacks the tool's permission.
        BadRequest: If the arguments do not fit the tool's argument type.
        InternalError: If the tool returns something not of its result type.
    """
    started = time.perf_counter()
    outcome = "ok"
    try:
        return _checked_call(ctx, used, args, ordinal)
    except AgentError as exc:
        outcome = str(exc.code)
        raise
    except Exception:
        outcome = "crashed"
        raise
    finally:
        observe = ctx.runtime.tool_observer
        if observe is not None:
            observe(ctx.agent_type, used.name, outcome, time.perf_counter() - started)


def _checked_call(ctx: Context, used: Tool[A, R], args: A | dict[str, Any], ordinal: int) -> R:
    agent = ctx.agent_type
    if used.permission not in ctx.runtime.permissions_of(agent, ctx.agent_permissions):
        msg = f"agent type {agent!r} may not call tool {used.name} (needs {used.permission})"
        raise Forbidden(msg)
    try:
        valid_args = msgspec.convert(args, used.args, from_attributes=True)
    except msgspec.ValidationError as exc:
        msg = f"bad arguments to tool {used.name}: {exc}"
        raise BadRequest(msg) from exc
    if used.owner is not None:
        check_acts_for(ctx.principal, getattr(valid_args, used.owner), what=f"call {used.name}")
    # The arguments are part of the key: a message id is chosen by the caller
    # (X-Request-Id), and two callers' ids may collide; their calls may not.
    digest = hashlib.sha256(msgspec.msgpack.encode(valid_args)).hexdigest()[:_DIGEST]
    key = state_key("tool", used.name, ctx.metadata.id, str(ordinal), digest)
    tracing = ctx.runtime.tracing
    if tracing is None:
        return _run(ctx, used, valid_args, key)
    span = tracing.start(
        f"execute_tool {used.name}",
        kind=SpanKind.INTERNAL,
        parent=ctx.metadata,
        attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": used.name},
    )
    try:
        return _run(ctx, used, valid_args, key)
    except AgentError as exc:
        span.set_status(StatusCode.ERROR, str(exc))
        raise
    finally:
        span.end()


def _run(ctx: Context, used: Tool[A, R], args: A, key: str) -> R:
    if used.side_effect:
        done = ctx.state.get(key)
        if done is not None:
            result: R = msgspec.msgpack.decode(done, type=used.result)
            return result
    raw = used.fn(args, ToolCall(context=ctx, key=key))
    try:
        result = msgspec.convert(raw, used.result, from_attributes=True)
    except msgspec.ValidationError as exc:
        msg = f"tool {used.name} returned a bad result: {exc}"
        raise InternalError(msg) from exc
    if used.side_effect:
        ctx.state.put(key, msgspec.msgpack.encode(result), ttl=RESULT_TTL)
    return result
