"""State store keys every backend can keep, and the in-memory store.

What agents keep between messages lives in a `StateStore`, under keys made
by `state_key` from free-form parts. `MemoryStore` serves a single node
and the tests; the networked stores (Redis, JetStream KV) live in `bridges`.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from typing import Final

from messages import InvalidKey

MAX_KEY_LENGTH: Final = 1024
"""The longest key any store takes (a KV key is a subject; the server's control line is 4 KiB)."""
MAX_PART_LENGTH: Final = 128
"""`state_key` writes a longer (escaped) part as a prefix of it and a digest of the whole."""
_PART_PREFIX: Final = 32
_DIGEST_HEX: Final = 32
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_KEY: Final = re.compile(r"[A-Za-z0-9_=-]+(?:\.[A-Za-z0-9_=-]+)*")


def state_key(*parts: str) -> str:
    """A store key from free-form parts, safe for every backend.

    Each part keeps letters, digits, `_` and `-`; any other character is
    written as `=` and its UTF-8 bytes in hex, so `user@example.com` becomes
    `user=40example=2Ecom`. Parts are joined with `.`, the separator `scan`
    understands. (JetStream KV keys allow only these characters.) A part
    longer than `MAX_PART_LENGTH` once escaped becomes its first 32
    characters, `=H` and a digest of all of it: the same part always gives
    the same key, and no key grows with what a caller sends.
    """
    if not parts:
        msg = "state_key() needs at least one part"
        raise ValueError(msg)
    return ".".join(_key_part(part) for part in parts)


def _key_part(part: str) -> str:
    if not part:
        return "="
    escaped = _UNSAFE.sub(_escape, part)
    if len(escaped) <= MAX_PART_LENGTH:
        return escaped
    # "=H" never comes out of escaping (which writes "=" and two hex digits).
    digest = hashlib.sha256(part.encode()).hexdigest()[:_DIGEST_HEX]
    return f"{escaped[:_PART_PREFIX]}=H{digest}"


def _escape(match: re.Match[str]) -> str:
    return "".join(f"={byte:02X}" for byte in match.group().encode())


def check_key(key: str) -> str:
    """Return `key` if every store can keep it.

    Raises:
        InvalidKey: If it is longer than `MAX_KEY_LENGTH` or not dot-separated
            tokens of `[A-Za-z0-9_=-]`.
    """
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key, f"is {len(key)} characters, over the limit of {MAX_KEY_LENGTH}")
    if not _KEY.fullmatch(key):
        raise InvalidKey(key, "is not dot-separated tokens of [A-Za-z0-9_=-] (use state_key)")
    return key


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
        check_key(key)
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store `value`; it expires after `ttl` seconds if given."""
        check_key(key)
        with self._lock:
            self._items[key] = (value, self._expiry(ttl))

    def delete(self, key: str) -> None:
        """Remove `key` (no-op if absent)."""
        check_key(key)
        with self._lock:
            self._items.pop(key, None)

    def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store `value` only if the current value is `expected` (None: absent)."""
        check_key(key)
        with self._lock:
            if self._live(key) != expected:
                return False
            self._items[key] = (value, self._expiry(ttl))
            return True

    def scan(self, prefix: str) -> list[str]:
        """Every live key under `prefix.`, sorted."""
        start = check_key(prefix) + "."
        with self._lock:
            return sorted(
                k for k in list(self._items) if k.startswith(start) and self._live(k) is not None
            )
