"""The state store agents keep conversation memory and idempotency keys in.

Agents hold no state between messages; what must survive a restart lives in
a `StateStore`, keyed by conversation or message id. The protocol is
synchronous because handlers run on actor threads; networked backends
(Redis, JetStream KV) implement it by hopping onto the node's I/O loop.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


def state_key(*parts: str) -> str:
    """A store key from free-form parts, safe for every backend.

    Each part keeps letters, digits, `_` and `-`; any other character is
    written as `=` and its UTF-8 bytes in hex, so `user@example.com` becomes
    `user=40example=2Ecom`. Parts are joined with `.`, the separator `scan`
    understands. (JetStream KV keys allow only these characters.)
    """
    if not parts:
        msg = "state_key() needs at least one part"
        raise ValueError(msg)
    return ".".join(_UNSAFE.sub(_escape, part) if part else "=" for part in parts)


def _escape(match: re.Match[str]) -> str:
    return "".join(f"={byte:02X}" for byte in match.group().encode())


class StateStore(Protocol):
    """Key-value state with expiry and compare-and-set.

    Keys are dot-separated tokens of `[A-Za-z0-9_=-]` (build them with
    `state_key`). Implementations: `MemoryStore` here; JetStream KV and
    Redis in `bridges`. One test suite runs against all three.
    """

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None if absent or expired."""
        ...

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store `value`; it expires after `ttl` seconds if given."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` (no-op if absent)."""
        ...

    def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store `value` only if the current value is `expected` (None: absent).

        Returns:
            Whether the value was stored. `compare_and_set(key, None, v)` is
            how a side effect claims an idempotency key exactly once.
        """
        ...

    def scan(self, prefix: str) -> list[str]:
        """Every live key under `prefix.` (keys made by `state_key(prefix, ...)`), sorted."""
        ...


class MemoryStore:
    """A `StateStore` in this process's memory: a dict with per-key expiry.

    For a single node and for tests; state does not survive the process.

    Args:
        clock: Monotonic clock, replaceable so tests can move time.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[bytes, float | None]] = {}

    def _live(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= self._clock():
            del self._items[key]
            return None
        return value

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None if absent or expired."""
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store `value`; it expires after `ttl` seconds if given."""
        with self._lock:
            self._items[key] = (value, self._expiry(ttl))

    def delete(self, key: str) -> None:
        """Remove `key` (no-op if absent)."""
        with self._lock:
            self._items.pop(key, None)

    def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store `value` only if the current value is `expected` (None: absent)."""
        with self._lock:
            if self._live(key) != expected:
                return False
            self._items[key] = (value, self._expiry(ttl))
            return True

    def scan(self, prefix: str) -> list[str]:
        """Every live key under `prefix.`, sorted."""
        start = prefix + "."
        with self._lock:
            return sorted(
                k for k in list(self._items) if k.startswith(start) and self._live(k) is not None
            )
