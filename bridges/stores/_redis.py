"""Redis as a state store: native expiry, compare-and-set as one Lua script."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

import redis.asyncio
import redis.exceptions

from actors import check_key
from config import redact_url
from messages import Unavailable

if TYPE_CHECKING:
    from config import StateSettings

T = TypeVar("T")

_MS: Final = 1000
_PROBE_TIMEOUT: Final = 1.0  # a readiness probe waits no longer for Redis

# KEYS[1] key; ARGV: absent-expected flag, expected, value, ttl in ms ("" none).
_REDIS_CAS: Final = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"""


class RedisStore:
    """Redis: native expiry, compare-and-set as one Lua script."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str, url: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._cas = client.register_script(_REDIS_CAS)
        self.url = url

    @classmethod
    async def open(cls, settings: StateSettings) -> RedisStore:
        """Connect and check that the server answers.

        Raises:
            Unavailable: If it does not answer within `settings.timeout`.
        """
        client = redis.asyncio.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
        )
        try:
            await asyncio.wait_for(client.ping(), settings.timeout)
        except (TimeoutError, OSError, redis.exceptions.RedisError) as exc:
            await client.aclose()
            msg = f"cannot reach Redis at {redact_url(settings.redis_url)}: {exc!r}"
            raise Unavailable(msg) from exc
        except BaseException:
            await asyncio.shield(client.aclose())
            raise
        return cls(client, prefix=settings.redis_prefix, url=settings.redis_url)

    async def get(self, key: str) -> bytes | None:
        """The value under `key`, or None."""
        value = await self._redis.get(self._prefix + check_key(key))
        return value.encode() if isinstance(value, str) else value

    async def put(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Store `value`, expiring after `ttl` seconds if given."""
        await self._redis.set(self._prefix + check_key(key), value, px=_milliseconds(ttl))

    async def delete(self, key: str) -> None:
        """Remove `key`."""
        await self._redis.delete(self._prefix + check_key(key))

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None
    ) -> bool:
        """Store `value` if the value is `expected` (None: absent), in one script."""
        px = _milliseconds(ttl)
        args = ["1" if expected is None else "0", expected or b"", value, "" if px is None else px]
        return bool(await self._cas(keys=[self._prefix + check_key(key)], args=args))

    async def scan(self, prefix: str) -> list[str]:
        """Keys under `prefix.`, sorted."""
        pattern = _glob_escape(self._prefix + check_key(prefix) + ".") + "*"
        cut = len(self._prefix)
        return sorted([k.decode()[cut:] async for k in self._redis.scan_iter(match=pattern)])

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def describe(self) -> str:
        """Where the server is."""
        return f"Redis at {redact_url(self.url)}"

    async def probe(self) -> str | None:
        """Why Redis cannot serve now (it does not answer a PING in time), or None."""
        try:
            await asyncio.wait_for(self._redis.ping(), _PROBE_TIMEOUT)
        except (TimeoutError, OSError, redis.exceptions.RedisError) as exc:
            return (
                f"Redis at {redact_url(self.url)} does not answer: {str(exc) or type(exc).__name__}"
            )
        return None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Never called: the client reconnects for each command, so it is never lost for good."""


def _milliseconds(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, math.ceil(ttl * _MS))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
