"""The synchronous `actors.StateStore` of actor threads, over a store on the I/O loop."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import nats.errors
import nats.js.errors
import redis.asyncio
import redis.exceptions

from messages import Unavailable

if TYPE_CHECKING:
    from bridges._loop import IoLoop
    from bridges.stores._registry import AsyncStore

T = TypeVar("T")


def run_or_unavailable(io: IoLoop, coro: Coroutine[Any, Any, T], *, timeout: float, what: str) -> T:
    """Run `coro` on the loop from an actor thread; any failure to finish is `Unavailable`.

    Raises:
        Unavailable: Naming `what`, if it timed out, was cancelled (the node
            is stopping) or its client failed.
    """
    try:
        return io.run(coro, timeout=timeout)
    except concurrent.futures.CancelledError as exc:
        msg = f"{what} was cancelled: the node is stopping"
        raise Unavailable(msg) from exc
    except TimeoutError as exc:
        msg = f"{what} took over {timeout} s"
        raise Unavailable(msg) from exc
    # nats-py raises RuntimeError when its transport closes mid-operation.
    except (OSError, RuntimeError, nats.errors.Error, redis.exceptions.RedisError) as exc:
        msg = f"{what} failed: {exc!r}"
        raise Unavailable(msg) from exc


class LoopStore:
    """`actors.StateStore` for actor threads over an `AsyncStore` on the I/O loop.

    Args:
        io: The node's I/O loop, where `store` runs.
        store: The backend.
        timeout: Seconds one operation may take.
    """

    def __init__(self, io: IoLoop, store: AsyncStore, *, timeout: float) -> None:
        self.io = io
        self.store = store
        self.timeout = timeout

    def _run(self, what: str, key: str, coro: Coroutine[Any, Any, T]) -> T:
        return run_or_unavailable(self.io, coro, timeout=self.timeout, what=f"state {what} {key!r}")

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None if absent or expired."""
        return self._run("get", key, self.store.get(key))

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store `value`; it expires after `ttl` seconds if given."""
        self._run("put", key, self.store.put(key, value, ttl=ttl))

    def delete(self, key: str) -> None:
        """Remove `key` (no-op if absent)."""
        self._run("delete", key, self.store.delete(key))

    def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store `value` only if the current value is `expected` (None: absent)."""
        return self._run(
            "compare-and-set", key, self.store.compare_and_set(key, expected, value, ttl=ttl)
        )

    def scan(self, prefix: str) -> list[str]:
        """Every live key under `prefix.`, sorted."""
        return self._run("scan", prefix, self.store.scan(prefix))

    def describe(self) -> str:
        """The backend's line in the supervision tree."""
        return self.store.describe()

    async def probe(self) -> str | None:
        """Why the backend cannot serve now, or None (on the loop)."""
        return await self.store.probe()

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the backend's connection is closed for good."""
        self.store.on_lost(callback)
