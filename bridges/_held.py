"""What the node holds open now: typed slots its edges read instead of the runtime's ports.

A supervised child that opens something other parts must reach (the NATS
bridge, the inference pool) puts it in its slot when it starts and takes it
out when it exits, so those parts read the live instance by its own type.
`Resources` tracks every held resource by child id, for readiness.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from messages import Unavailable

T = TypeVar("T")


class Held(Generic[T]):
    """The instance of one thing the node holds now, if any.

    Args:
        what: What it is, for the error when it is not held ("the inference pool").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._current: T | None = None

    @property
    def current(self) -> T | None:
        """The instance held now, or None."""
        return self._current

    def get(self) -> T:
        """The instance held now.

        Raises:
            Unavailable: If none is held.
        """
        current = self._current
        if current is None:
            msg = f"{self.what} is not running on this node"
            raise Unavailable(msg)
        return current

    def hold(self, value: T) -> Callable[[], None]:
        """Hold `value` from now on; return what releases it.

        Releasing is a no-op once another instance is held.
        """
        self._current = value

        def release() -> None:
            if self._current is value:
                self._current = None

        return release


class Resource(Protocol):
    """Something a node holds open on its loop that can describe itself.

    `probe()` says why it cannot serve now, None if it can; `on_lost(callback)`
    calls back once it is lost for good. Both are called on the loop.
    """

    def describe(self) -> str:
        """One line for the supervision tree."""
        ...

    def close(self) -> Coroutine[Any, Any, None]:
        """Close it (gracefully, bounded)."""
        ...

    def probe(self) -> Coroutine[Any, Any, str | None]:
        """Why it cannot serve now, or None if it can."""
        ...

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once it is lost for good."""
        ...


class Resources:
    """The resources a node holds open now, by child id (for readiness)."""

    def __init__(self) -> None:
        self._held: dict[str, Resource] = {}

    def hold(self, id_: str, resource: Resource) -> Callable[[], None]:
        """Record that `resource` is open under `id_`; return what records it closed."""
        self._held[id_] = resource

        def release() -> None:
            if self._held.get(id_) is resource:
                del self._held[id_]

        return release

    async def problem(self, id_: str) -> str | None:
        """Why the resource `id_` cannot serve now (not open, or its probe), or None."""
        resource = self._held.get(id_)
        if resource is None:
            return f"{id_} is not open"
        return await resource.probe()
