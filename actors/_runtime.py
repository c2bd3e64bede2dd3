"""What the agents of one node share: directory, timers, events and defaults."""

from __future__ import annotations

import itertools
import os
import socket
from typing import TYPE_CHECKING

from actors._admission import Admission, AdmissionStatistics
from actors._call import AgentDefaults
from actors._directory import Directory, Listeners
from actors._ref import TypeRef
from actors._timers import Timers
from messages import SupervisionEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors._ports import AuditLog, Inference, StateStore, Transport
    from actors._tracing import Tracing


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
