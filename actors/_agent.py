"""The Agent base: an actor whose handlers are registered by type annotation."""

from __future__ import annotations

import inspect
import itertools
import logging
import time
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from opentelemetry.trace import Span, StatusCode

from actors._actor import Actor
from actors._call import Call
from actors._context import Context
from actors._lifecycle import ExitReason
from actors._ref import LocalAgentRef
from actors._tracing import within
from messages import (
    AgentDefinitionError,
    AgentError,
    AgentStopped,
    BadRequest,
    ExitKind,
    InternalError,
    Metadata,
    RequestTimeout,
)

if TYPE_CHECKING:
    from actors._runtime import Runtime

logger: Final = logging.getLogger("actorfleet.agent")

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[[Any, Any, Context], Any]

_HANDLER_MARK: Final = "__actorfleet_handles__"
_instance_counter = itertools.count(1)


def handler(fn: F) -> F:
    """Mark an agent method as the handler for the type of its message argument.

    The method's signature is `(self, msg: T, ctx: Context) -> Reply`; `T` may
    be a union, in which case the method handles each member.
    """
    setattr(fn, _HANDLER_MARK, True)
    return fn


def _message_types(cls: type, name: str, fn: Callable[..., Any]) -> tuple[type, ...]:
    params = list(inspect.signature(fn).parameters)
    if len(params) != 3:  # noqa: PLR2004 - self, msg, ctx
        msg = f"{cls.__name__}.{name} must take (self, msg, ctx)"
        raise AgentDefinitionError(msg)
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        msg = f"cannot resolve the annotations of {cls.__name__}.{name}: {exc}"
        raise AgentDefinitionError(msg) from exc
    annotation = hints.get(params[1])
    if annotation is None:
        msg = f"{cls.__name__}.{name}: annotate the message argument with its type"
        raise AgentDefinitionError(msg)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    for member in members:
        if not isinstance(member, type):
            msg = f"{cls.__name__}.{name}: {member!r} is not a message class"
            raise AgentDefinitionError(msg)
    return members


def _default_type_name(cls: type) -> str:
    name = cls.__name__
    return (name.removesuffix("Agent") or name).lower()


class Agent(Actor):
    """Base class for agents: typed handlers, deadlines, supervision, kill.

    Subclasses declare handlers with `@handler`; requests whose type has no
    handler get a `BadRequest` error and the agent carries on. A handler that
    raises an `AgentError` answers with it; any other exception crashes the
    agent: the caller gets `InternalError`, queued callers `AgentStopped`,
    and the supervisor restarts it.

    Start agents with `spawn`, which returns a `LocalAgentRef`.

    Attributes:
        agent_type: The name callers address (defaults to the class name
            without an `Agent` suffix, lower-cased).
    """

    agent_type: ClassVar[str] = "agent"
    # The type of the chunks its handlers `ctx.emit`, if they stream (the HTTP
    # edge then offers `POST /v1/agents/<type>/stream` with Server-Sent Events).
    chunk_type: ClassVar[type | None] = None
    # Tool permissions of the type (`ctx.use` checks them); a node's config
    # may replace them per type (`pools[].permissions`).
    permissions: ClassVar[frozenset[str]] = frozenset()
    # The msgspec type of `pools[].options`, passed to __init__ as `options=`.
    options_type: ClassVar[type | None] = None
    handlers: ClassVar[dict[type, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "agent_type" not in cls.__dict__:
            cls.agent_type = _default_type_name(cls)
        found: dict[type, Handler] = {}
        for base in reversed(cls.__mro__[1:]):
            found.update(getattr(base, "handlers", {}))
        for name, member in cls.__dict__.items():
            if callable(member) and getattr(member, _HANDLER_MARK, False):
                for message_type in _message_types(cls, name, member):
                    found[message_type] = member
        cls.handlers = found

    def __init__(self, runtime: Runtime, *, instance: str | None = None) -> None:
        super().__init__(f"{self.agent_type}/{instance or next(_instance_counter)}")
        self.runtime = runtime
        self.ref = LocalAgentRef(self)
        self._margin = runtime.defaults.hung_margin
        self._busy: tuple[Call, float] | None = None
        # When the running handler started (epoch seconds, as deadlines); None while idle.
        self.busy_since: float | None = None
        self._admission = runtime.admission(self.agent_type)
        self._watched = False

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the agent stopped, once it has."""
        return self.exit_link.reason

    @classmethod
    def spawn(cls, runtime: Runtime, *args: Any, **kwargs: Any) -> LocalAgentRef:
        """Start an agent and return its reference.

        The agent joins the runtime's directory at once, so asks addressed
        to its type may reach it as soon as this returns.
        """
        agent = cls(runtime, *args, **kwargs)
        runtime.directory.register(agent)
        agent.start()
        return agent.ref

    def _on_call(self, call: Call) -> None:
        call.taken = True
        now = time.time()
        reply = call.reply
        handle = self.handlers.get(type(call.payload))
        if handle is None or call.meta.deadline <= now or (reply is not None and reply.done()):
            self._refuse(call, now)
            return
        expiry = call.meta.deadline + self._margin
        self._busy = (call, expiry)
        if not self._watched:
            self._watch(expiry)
        self.busy_since = now
        tracing = self.runtime.tracing
        if tracing is None:
            self._run(handle, call, call.meta, None)
            return
        span = tracing.process(call.meta, call.payload, self.agent_type)
        try:
            self._run(handle, call, within(call.meta, span), span)
        finally:
            span.end()

    def _run(self, handle: Handler, call: Call, meta: Metadata, span: Span | None) -> None:
        reply = call.reply
        started = self.busy_since or time.time()
        try:
            result = handle(self, call.payload, Context(self, meta, reply))
        except AgentError as error:
            self.busy_since = None  # idle before the caller hears (see below)
            if span is not None:
                span.set_attribute("error.type", error.code)
            if reply is not None:
                reply.fail(error)
        except Exception as exc:  # noqa: BLE001 - a crash, reported to the supervisor
            if span is not None:
                span.set_status(StatusCode.ERROR, type(exc).__name__)
            self._handler_crashed(call, exc)
        else:
            # Idle to admission before the caller hears, so that its next
            # request is not taken for one that has to wait.
            self.busy_since = None
            if reply is not None:
                reply.set(result)
        finally:
            self._busy = self.busy_since = None
            self._admission.learn(time.time() - started)

    def _refuse(self, call: Call, now: float) -> None:
        """Answer a call no handler will run for with a typed error (or skip it)."""
        error: AgentError
        if call.reply is not None and call.reply.done():
            return  # its caller gave up on it (an HTTP client went away): skip it
        if call.meta.deadline <= now:
            error = RequestTimeout(f"deadline passed before {self.name} took the request")
        else:
            error = BadRequest(f"{self.agent_type} does not handle {type(call.payload).__name__}")
        if call.reply is not None:
            call.reply.fail(error)

    def _handler_crashed(self, call: Call, exc: Exception) -> None:
        logger.error("agent %s crashed", self.name, exc_info=exc)
        self._busy = None
        # The exception's type only: its message may quote what the request
        # carried, and the exit reason is shown by /healthz and the dashboard.
        # The log above has the whole of it.
        self._die(ExitReason(ExitKind.CRASHED, type(exc).__name__))
        if call.reply is not None:
            call.reply.fail(
                InternalError(f"{self.name} failed handling {type(call.payload).__name__}")
            )

    def _watch(self, expiry: float) -> None:
        self._watched = True
        self.runtime.timers.call_later(expiry - time.time(), self._check_hung)

    def _check_hung(self) -> None:
        # Runs on the timer thread. The handler thread sets _busy then reads
        # _watched; this sets _watched then reads _busy: one of them always
        # sees the other's write, so a busy agent is never left unwatched.
        self._watched = False
        busy = self._busy
        if busy is None or self.mailbox.closed:
            return
        call, expiry = busy
        if expiry > time.time():
            self._watch(expiry)
            return
        logger.error("agent %s is hung handling %s", self.name, type(call.payload).__name__)
        self._die(ExitReason(ExitKind.HUNG, f"handler overran its deadline by {self._margin} s"))

    def kill(self) -> None:
        """Kill the agent now, from any thread.

        Queued and in-flight requests fail at once with `AgentStopped`, the
        supervisor is told, and the actor thread exits as soon as the running
        handler (if any) returns.
        """
        self._die(ExitReason(ExitKind.KILLED))

    def describe(self) -> str | None:
        """One line about the agent's own state for the supervision tree (None: nothing)."""
        return None

    def fail(self, reason: str) -> None:
        """Crash the agent from any thread, as if a handler had raised.

        For agents that watch something outside their mailbox (a connection,
        a process): the supervisor restarts them by their restart type.
        """
        logger.error("agent %s failed: %s", self.name, reason)
        self._die(ExitReason(ExitKind.CRASHED, reason))

    def _leave(self, reason: ExitReason) -> None:
        """Leave the directory and fail the request in flight, if any, as the agent dies."""
        self.runtime.directory.unregister(self)
        busy = self._busy
        if busy is not None and busy[0].reply is not None:
            busy[0].reply.fail(AgentStopped(self.name, str(reason.kind)))
