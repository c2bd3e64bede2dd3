"""What the agents of one node share: directory, timers, events and defaults."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import msgspec

from actors._admission import Admission, AdmissionStatistics
from actors._ref import TypeRef
from actors._timers import Timers
from messages import SupervisionEvent

if TYPE_CHECKING:
    from collections.abc import Iterator

    from actors._agent import Agent
    from actors._audit import AuditLog
    from actors._call import Call
    from actors._state import StateStore
    from actors._tracing import Tracing
    from messages import (
        Event,
        GenerateRequest,
        GenerateResult,
        Metadata,
        TokenChunk,
    )

T = TypeVar("T")

DEFAULT_ASK_TIMEOUT: Final = 30.0
DEFAULT_HUNG_MARGIN: Final = 5.0


class Transport(Protocol):
    """How a node reaches agents elsewhere and publishes events (the NATS bridge)."""

    def deliver(self, agent_type: str, call: Call) -> bool:
        """Send `call` to some agent of `agent_type`; False if it cannot be sent.

        Returns at once; the call's reply is settled later, from another thread.
        """
        ...

    def publish(self, event: Event, meta: Metadata) -> None:
        """Store a domain event durably; return once it is stored.

        Raises:
            messages.AgentError: Typed failure (unavailable, timeout, ...).
        """
        ...


class Inference(Protocol):
    """How agents reach the inference pool (`ctx.generate`); the pool lives on the I/O loop."""

    def generate(self, request: GenerateRequest, meta: Metadata) -> GenerateResult:
        """Generate and wait for the result, no later than `meta.deadline`.

        Raises:
            messages.AgentError: Typed failure (overloaded, timeout, bad request, ...).
        """
        ...

    def stream(self, request: GenerateRequest, meta: Metadata) -> GenerationStream:
        """Generate, yielding chunks as they come; the result follows the last."""
        ...


class GenerationStream(Protocol):
    """Chunks of a generation as they arrive; `result` once the iteration ends."""

    def __iter__(self) -> Iterator[TokenChunk]:
        """Yield chunks until the generation ends (raises its typed error, if any)."""
        ...

    @property
    def result(self) -> GenerateResult:
        """The final result (after the iteration has ended)."""
        ...

    def close(self) -> None:
        """Stop early: the generation is cancelled and its slot freed."""
        ...


class AgentDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """Defaults applied to every agent of a runtime.

    Attributes:
        ask_timeout: Deadline, in seconds from now, of an ask that names none.
        hung_margin: Seconds past its deadline after which a still-running
            handler counts as hung: the agent is replaced and its queue fails.
    """

    ask_timeout: float = DEFAULT_ASK_TIMEOUT
    hung_margin: float = DEFAULT_HUNG_MARGIN


class Directory:
    """Local agents by type, for routing asks addressed to a type.

    Reads are lock-free (copy-on-write tuples); agents register when they are
    spawned and unregister the moment they die.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, tuple[Agent, ...]] = {}
        self._watchers: dict[str, Listeners[int]] = {}

    def register(self, agent: Agent) -> None:
        """Add a live agent under its type."""
        with self._lock:
            current = self._members.get(agent.agent_type, ())
            self._members[agent.agent_type] = (*current, agent)
        self._notify(agent.agent_type)

    def unregister(self, agent: Agent) -> None:
        """Remove an agent (no-op if it is not registered)."""
        with self._lock:
            current = self._members.get(agent.agent_type, ())
            if agent not in current:
                return
            self._members[agent.agent_type] = tuple(a for a in current if a is not agent)
        self._notify(agent.agent_type)

    def watch(self, agent_type: str, watcher: Callable[[int], None]) -> Callable[[], None]:
        """Call `watcher(count)` whenever an agent of `agent_type` comes or goes.

        It runs on the thread that registered or unregistered the agent and
        must be quick. Returns a function that stops the watching.
        """
        with self._lock:
            listeners = self._watchers.setdefault(agent_type, Listeners())
        return listeners.subscribe(watcher)

    def _notify(self, agent_type: str) -> None:
        listeners = self._watchers.get(agent_type)
        if listeners is not None:
            listeners.publish(len(self._members.get(agent_type, ())))

    def members(self, agent_type: str) -> tuple[Agent, ...]:
        """The live local agents of a type."""
        return self._members.get(agent_type, ())

    def types(self) -> list[str]:
        """Agent types with at least one live local member."""
        return sorted(t for t, members in self._members.items() if members)


class Listeners(Generic[T]):
    """Synchronous fan-out of values to listeners (copy-on-write, lock-free reads).

    Listeners run on the publishing thread and must be quick.
    """

    def __init__(self) -> None:
        self._listeners: tuple[Callable[[T], None], ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[T], None]) -> Callable[[], None]:
        """Add a listener; return a function that removes it."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def publish(self, value: T) -> None:
        """Deliver `value` to every listener."""
        for listener in self._listeners:
            listener(value)


class EventBus(Listeners[SupervisionEvent]):
    """Supervision events, fanned out on the publishing supervisor's thread."""


_node_counter = itertools.count(1)


def default_node_name() -> str:
    """`<hostname>-<pid>[-n]`: unique per node in a process."""
    n = next(_node_counter)
    suffix = "" if n == 1 else f"-{n}"
    return f"{socket.gethostname()}-{os.getpid()}{suffix}"


class Runtime:
    """The services shared by the agents and supervisors of one node.

    Args:
        node: Node name, used in sender fields and statistics.
        defaults: Deadline and hung-handler defaults.
        state: Where agents keep state between messages (`ctx.state`).

    Attributes:
        transport: The bridge to other nodes, while one is connected.
        prefer_local: Serve asks to a type with local agents without the transport.
        inference: The inference pool, while one runs (`ctx.generate`).
    """

    def __init__(
        self,
        *,
        node: str | None = None,
        defaults: AgentDefaults | None = None,
        state: StateStore | None = None,
    ) -> None:
        self.node = node or default_node_name()
        self.defaults = defaults or AgentDefaults()
        self.state = state
        self.directory = Directory()
        self.events = EventBus()
        self.timers = Timers(name=f"actorfleet-timers-{self.node}")
        self._type_refs: dict[str, TypeRef] = {}
        self._admissions: dict[str, Admission] = {}
        self.transport: Transport | None = None
        self.prefer_local = True
        self.inference: Inference | None = None
        self.tracing: Tracing | None = None
        # The in-memory OpenTelemetry metric reader (telemetry.metrics = "memory").
        self.metrics_reader: object | None = None
        # The audit log of generations, while one is open (`[state] audit_stream`);
        # when required, no generation runs while it is not.
        self.audit: AuditLog | None = None
        self.audit_required = False
        # Tool permissions per agent type, replacing what agent classes declare.
        self.grants: dict[str, frozenset[str]] = {}
        # Told of every tool call: (agent type, tool, outcome, seconds).
        self.tool_observer: Callable[[str, str, str, float], None] | None = None
        self._closers: list[Callable[[], object]] = []

    def ref(self, agent_type: str) -> TypeRef:
        """The reference that routes to any live agent of `agent_type`.

        One per type, so that round-robin spreads load across all callers.
        """
        ref = self._type_refs.get(agent_type)
        if ref is None:
            ref = self._type_refs.setdefault(agent_type, TypeRef(self, agent_type))
        return ref

    def admission(self, agent_type: str) -> Admission:
        """The admission (queue bound, service time) of the local agents of `agent_type`.

        One per type, made with the defaults on first use; a node configures
        it from `pools[].max_queue` and `pools[].service_time`.
        """
        admission = self._admissions.get(agent_type)
        if admission is None:
            made = Admission(agent_type, timers=self.timers)
            admission = self._admissions.setdefault(agent_type, made)
        return admission

    def admission_statistics(self) -> list[AdmissionStatistics]:
        """Admission figures of every agent type this node has admitted requests for."""
        return [
            admission.statistics(self.directory.members(agent_type))
            for agent_type, admission in sorted(self._admissions.items())
        ]

    def permissions_of(self, agent_type: str, declared: frozenset[str]) -> frozenset[str]:
        """The tool permissions of an agent type: its grant, else what its class declares."""
        return self.grants.get(agent_type, declared)

    def add_closer(self, closer: Callable[[], object]) -> None:
        """Call `closer()` when the runtime closes (last added, first called)."""
        self._closers.append(closer)

    def close(self) -> None:
        """Run the closers, then stop the runtime's timer thread."""
        while self._closers:
            self._closers.pop()()
        self.timers.close()
