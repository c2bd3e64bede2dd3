"""The local agents of a node by type, and the listeners told when they come and go."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors._mailbox import Mailbox

T = TypeVar("T")


class Member(Protocol):
    """A live local agent as the directory and admission see it (an `Agent`)."""

    @property
    def agent_type(self) -> str:
        """The type it is registered under."""
        ...

    @property
    def mailbox(self) -> Mailbox:
        """Its inbox."""
        ...

    @property
    def busy_since(self) -> float | None:
        """When its running handler started (epoch seconds); None while idle."""
        ...


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


class Directory:
    """Local agents by type, for routing asks addressed to a type.

    Reads are lock-free (copy-on-write tuples); agents register when they are
    spawned and unregister the moment they die.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, tuple[Member, ...]] = {}
        self._watchers: dict[str, Listeners[int]] = {}

    def register(self, agent: Member) -> None:
        """Add a live agent under its type."""
        with self._lock:
            current = self._members.get(agent.agent_type, ())
            self._members[agent.agent_type] = (*current, agent)
        self._notify(agent.agent_type)

    def unregister(self, agent: Member) -> None:
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

    def members(self, agent_type: str) -> tuple[Member, ...]:
        """The live local agents of a type."""
        return self._members.get(agent_type, ())

    def types(self) -> list[str]:
        """Agent types with at least one live local member."""
        return sorted(t for t, members in self._members.items() if members)
