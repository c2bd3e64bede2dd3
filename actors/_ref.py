"""References to agents: the one API for asking and telling, local or remote."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Protocol

from actors._call import Call, make_metadata
from actors._directory import Member
from actors._lifecycle import ExitListener
from actors._reply import Reply
from messages import AgentStopped, Metadata, Overloaded, Priority, Unavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors._admission import Admission
    from actors._call import AgentDefaults
    from actors._directory import Directory
    from actors._lifecycle import ExitLink, ExitReason
    from actors._ports import Transport


class AgentRef(Protocol):
    """What callers hold to talk to an agent, wherever it runs.

    `ask` blocks until the reply or the deadline; `ask_async` returns a
    `Reply` to wait on; `tell` sends without a reply. `cause` is the
    metadata of the request being handled, if any: the new request inherits
    its deadline, priority and trace context and names it as correlation id. Failures are raised as
    `messages.AgentError` subclasses, the same whether the agent is local or
    remote; a request the agents cannot take in time is refused at once with
    `messages.Overloaded` and its `retry_after`.
    """

    @property
    def name(self) -> str:
        """What the reference points at (`type` or `type/instance`)."""
        ...

    def ask_async(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        sender: str | None = None,
        cause: Metadata | None = None,
        on_chunk: Callable[[Any], None] | None = None,
    ) -> Reply[Any]:
        """Send a request and return its pending reply.

        `on_chunk(chunk)` is called (on the handler's thread, or the loop for
        a remote agent) with each chunk the handler emits, before the reply.
        """
        ...

    def ask(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        sender: str | None = None,
        cause: Metadata | None = None,
    ) -> Any:
        """Send a request and wait for its reply until its deadline."""
        ...

    def tell(
        self,
        message: Any,
        *,
        priority: Priority | None = None,
        message_id: str | None = None,
        sender: str | None = None,
        cause: Metadata | None = None,
    ) -> None:
        """Send a message that gets no reply."""
        ...


class Routing(Protocol):
    """What references need of their node (a `Runtime`)."""

    @property
    def defaults(self) -> AgentDefaults:
        """The default deadline of an ask that names none."""
        ...

    @property
    def directory(self) -> Directory:
        """The live local agents by type."""
        ...

    @property
    def transport(self) -> Transport | None:
        """The bridge to other nodes, while one is connected."""
        ...

    @property
    def prefer_local(self) -> bool:
        """Whether a type's local agents serve its asks before the transport does."""
        ...

    def admission(self, agent_type: str) -> Admission:
        """The admission of the local agents of `agent_type`."""
        ...


class LocalMember(Member, Protocol):
    """What a `LocalAgentRef` needs of its agent (an `Agent`)."""

    @property
    def name(self) -> str:
        """`type/instance`."""
        ...

    @property
    def runtime(self) -> Routing:
        """The node it runs on."""
        ...

    @property
    def exit_link(self) -> ExitLink:
        """Where its exit is announced."""
        ...

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why it stopped, once it has."""
        ...

    def describe(self) -> str | None:
        """Its own line for the supervision tree, if it has one."""
        ...

    def kill(self) -> None:
        """Kill it at once."""
        ...

    def request_stop(self) -> bool:
        """Ask for a graceful stop; False if already dead."""
        ...


class _RefBase:
    """Shared ask/tell plumbing; subclasses say how a call is delivered."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: Routing) -> None:
        self._runtime = runtime

    def _deliver(self, call: Call) -> bool | Overloaded:
        """Put `call` in a mailbox: True; False if no live agent took it; or its refusal."""
        raise NotImplementedError

    def _undeliverable(self) -> Unavailable:
        raise NotImplementedError

    def ask_async(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        sender: str | None = None,
        cause: Metadata | None = None,
        on_chunk: Callable[[Any], None] | None = None,
    ) -> Reply[Any]:
        """Send a request and return its pending reply.

        `on_chunk(chunk)` is called (on the handler's thread, or the loop for
        a remote agent) with each chunk the handler emits, before the reply.
        """
        meta = make_metadata(
            default_timeout=self._runtime.defaults.ask_timeout,
            timeout=timeout,
            deadline=deadline,
            priority=priority,
            message_id=message_id,
            correlation_id=correlation_id,
            sender=sender,
            cause=cause,
        )
        reply: Reply[Any] = Reply(meta.deadline)
        reply.on_chunk = on_chunk
        outcome = self._deliver(Call(message, meta, reply))
        if outcome is not True:
            reply.fail(self._undeliverable() if outcome is False else outcome)
        return reply

    def ask(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        sender: str | None = None,
        cause: Metadata | None = None,
    ) -> Any:
        """Send a request and wait for its reply until its deadline.

        Raises:
            messages.RequestTimeout: If the deadline passes first.
            messages.AgentError: Whatever typed error the agent answered with.
        """
        reply = self.ask_async(
            message,
            timeout=timeout,
            deadline=deadline,
            priority=priority,
            message_id=message_id,
            correlation_id=correlation_id,
            sender=sender,
            cause=cause,
        )
        return reply.get()

    def tell(
        self,
        message: Any,
        *,
        priority: Priority | None = None,
        message_id: str | None = None,
        sender: str | None = None,
        cause: Metadata | None = None,
    ) -> None:
        """Send a message that gets no reply.

        Raises:
            messages.Unavailable: If no live agent could take it.
            messages.Overloaded: If the agents are too busy to take it.
        """
        meta = make_metadata(
            default_timeout=self._runtime.defaults.ask_timeout,
            timeout=None,
            deadline=None,
            priority=priority,
            message_id=message_id,
            correlation_id=None,
            sender=sender,
            cause=cause,
        )
        outcome = self._deliver(Call(message, meta, None))
        if outcome is False:
            raise self._undeliverable()
        if outcome is not True:
            raise outcome


class LocalAgentRef(_RefBase):
    """A reference to one agent instance on this node.

    It is also the supervisor's handle on the agent: `link`, `shutdown`
    and `kill` are what a supervisor calls.
    """

    __slots__ = ("_admission", "_agent", "_mailbox", "_members")

    def __init__(self, agent: LocalMember) -> None:
        super().__init__(agent.runtime)
        self._agent = agent
        self._mailbox = agent.mailbox
        self._members = (agent,)
        # Admitted like any request to its type, counting only its own queue.
        self._admission = agent.runtime.admission(agent.agent_type)

    @property
    def name(self) -> str:
        """`type/instance` of the agent."""
        return self._agent.name

    @property
    def agent_type(self) -> str:
        """The agent's type name."""
        return self._agent.agent_type

    @property
    def alive(self) -> bool:
        """Whether the agent still takes messages."""
        return not self._mailbox.closed

    @property
    def queue_depth(self) -> int:
        """Messages waiting in the agent's mailbox."""
        return len(self._mailbox)

    @property
    def detail(self) -> str | None:
        """The agent's own line for the supervision tree, if it has one."""
        return self._agent.describe()

    def _deliver(self, call: Call) -> bool | Overloaded:
        return self._admission.place(call, self._members, 0)

    def _undeliverable(self) -> Unavailable:
        return AgentStopped(self._agent.name, str(self._agent.exit_reason or "stopped"))

    def link(self, listener: ExitListener) -> None:
        """Call `listener(reason)` when the agent exits (now, if it has)."""
        self._agent.exit_link.link(listener)

    def kill(self) -> None:
        """Kill the agent at once: queued and in-flight asks fail, the supervisor is told."""
        self._agent.kill()

    def shutdown(self, *, timeout: float) -> None:
        """Stop gracefully (finish what is queued); kill if that takes over `timeout`."""
        if not self._agent.request_stop():
            return
        if not self._agent.exit_link.wait(timeout=timeout):
            self._agent.kill()

    def __repr__(self) -> str:
        return f"<LocalAgentRef {self.name}>"


class TypeRef(_RefBase):
    """A reference to an agent type: each call goes to one live member.

    A local call goes to the member with the fewest requests ahead of it,
    round-robin among equals, through the type's `Admission`, which may
    refuse it at once with `Overloaded`. A member that died between lookup
    and delivery is skipped, so a caller only sees `Unavailable` when no
    member of the type is alive, at once, like a NATS request with no
    responders.
    """

    __slots__ = ("_admission", "_agent_type", "_counter")

    def __init__(self, runtime: Routing, agent_type: str) -> None:
        super().__init__(runtime)
        self._agent_type = agent_type
        self._counter = itertools.count()
        self._admission: Admission = runtime.admission(agent_type)

    @property
    def name(self) -> str:
        """The agent type."""
        return self._agent_type

    def _deliver(self, call: Call) -> bool | Overloaded:
        runtime = self._runtime
        transport = runtime.transport
        if transport is None:
            return self._place(call)
        if runtime.prefer_local:
            outcome = self._place(call)
            if outcome is not False:
                return outcome
        return transport.deliver(self._agent_type, call)

    def members(self) -> tuple[Member, ...]:
        """The live local agents of the type."""
        return self._runtime.directory.members(self._agent_type)

    def deliver_local(self, call: Call, *, admitted: bool = False) -> bool:
        """Hand `call` to a live local member; False if there is none.

        True means it was queued, or refused and answered `Overloaded` (a
        refused tell, having no one to answer, is only counted). `admitted`:
        the caller bounds what it hands out itself (the event consumer), so
        the call is queued, never refused.
        """
        members = self._runtime.directory.members(self._agent_type)
        if not members:
            return False
        outcome = self._admission.place(call, members, next(self._counter), admitted=admitted)
        if outcome is True or outcome is False:
            return outcome
        if call.reply is not None:
            call.reply.fail(outcome)
        return True

    def _place(self, call: Call, *, admitted: bool = False) -> bool | Overloaded:
        members = self._runtime.directory.members(self._agent_type)
        if not members:
            return False
        return self._admission.place(call, members, next(self._counter), admitted=admitted)

    def _undeliverable(self) -> Unavailable:
        where = "on this node" if self._runtime.transport is None else "reachable"
        return Unavailable(f"no agent of type {self._agent_type!r} is {where}")

    def __repr__(self) -> str:
        return f"<TypeRef {self._agent_type}>"
