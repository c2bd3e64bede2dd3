"""Where a node keeps state: the loop-side store protocol and the backends by name.

A backend is one module with a class that has an async `open`, registered
here under the name `[state] backend` gives it. `memory` is the one backend
that needs no connection: it lives in the runtime (`actors.MemoryStore`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

from bridges.stores._kv import KvStore
from bridges.stores._redis import RedisStore

if TYPE_CHECKING:
    from config import NatsSettings, StateSettings

MEMORY: Final = "memory"


class AsyncStore(Protocol):
    """The loop side of a state store: `actors.StateStore` as coroutines.

    Keys are checked by the store (`actors.check_key`) before they reach
    the server. `probe()` says why the store cannot serve now (None: it
    can); a store whose connection is closed for good calls its `on_lost`
    listeners, so the child holding it crashes and is restarted.
    """

    async def get(self, key: str) -> bytes | None:
        """The value under `key`, or None if absent or expired."""
        ...

    async def put(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Store `value`; it expires after `ttl` seconds if given."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key` (no-op if absent)."""
        ...

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None
    ) -> bool:
        """Store `value` only if the current value is `expected` (None: absent)."""
        ...

    async def scan(self, prefix: str) -> list[str]:
        """Every live key under `prefix.`, sorted."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...

    def describe(self) -> str:
        """One line for the supervision tree."""
        ...

    async def probe(self) -> str | None:
        """Why the store cannot serve now, or None."""
        ...

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the connection is closed for good."""
        ...


class Where(Protocol):
    """How a networked store is reached: the settings and this node's NATS."""

    @property
    def state(self) -> StateSettings:
        """The `[state]` section."""
        ...

    @property
    def nats(self) -> NatsSettings:
        """The `[nats]` section."""
        ...

    @property
    def url(self) -> str:
        """The NATS URL this node uses (the embedded server's, if it runs one)."""
        ...

    @property
    def client_name(self) -> str:
        """The name the store's connection goes by."""
        ...


Opener = Callable[[Where], Awaitable[AsyncStore]]


async def _open_kv(where: Where) -> AsyncStore:
    return await KvStore.open(where.url, where.state, where.nats, name=where.client_name)


async def _open_redis(where: Where) -> AsyncStore:
    return await RedisStore.open(where.state)


STORES: Final[dict[str, Opener]] = {"kv": _open_kv, "redis": _open_redis}


def is_networked(backend: str) -> bool:
    """Whether `backend` is opened over the network (everything but `memory`)."""
    return backend != MEMORY


async def open_store(where: Where) -> AsyncStore:
    """Open the store `where.state.backend` names.

    Raises:
        KeyError: If no networked backend has that name (settings decoding
            refuses such names first).
        messages.Unavailable: If the store does not answer.
    """
    return await STORES[where.state.backend](where)
