"""State stores on the network: JetStream KV and Redis, behind `actors.StateStore`.

Both refuse a key that is too long or malformed with `messages.InvalidKey`
before it reaches the server (`actors.check_key`). Both run their client on
the node's I/O loop; `LoopStore` gives actor
threads the synchronous `StateStore` protocol by hopping onto the loop with
a bounded wait. A backend that cannot answer in time, or at all, raises
`Unavailable`; nothing is retried behind the caller's back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import redis.asyncio
import redis.exceptions
from nats.js.api import KeyValueConfig

from actors import check_key
from bridges._connect import (
    ClosedWatch,
    connection_problem,
    open_connection,
    supports_message_ttl,
)
from messages import Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from bridges._loop import IoLoop
    from config import NatsSettings, StateSettings

T = TypeVar("T")

logger: Final = logging.getLogger("actorfleet.state")

# A value is stored with its absolute expiry (epoch seconds, 0: none), so that
# expiry is exact and the same on every node whatever the server version.
_Envelope = tuple[float, bytes]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Envelope).decode
_EXPECTED_LAST: Final = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_TTL_SLACK: Final = 1.0  # the server's TTL only reclaims space; the envelope decides
_MS: Final = 1000
_STREAM_IN_USE: Final = 10058
_SCAN_READS: Final = 32  # reads in flight while a scan checks which keys are live
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


class AsyncStore(Protocol):
    """The loop side of a state store: `StateStore` as coroutines.

    `probe()` says why the store cannot serve now (None: it can); a
    store whose connection is closed for good calls its `on_lost`
    listeners, so the child holding it crashes and is restarted.
    """

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, *, ttl: float | None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None
    ) -> bool: ...
    async def scan(self, prefix: str) -> list[str]: ...
    async def close(self) -> None: ...
    def describe(self) -> str: ...
    async def probe(self) -> str | None: ...
    def on_lost(self, callback: Callable[[str], None]) -> None: ...


def _expires(ttl: float | None) -> float:
    return 0.0 if ttl is None else time.time() + ttl


def _live(data: bytes) -> bytes | None:
    expires, value = _decode(data)
    return None if expires and expires <= time.time() else value


class KvStore:
    """A JetStream key-value bucket (history 1); values carry their expiry.

    Deleting purges the key, so no earlier revision of it is kept.
    """

    def __init__(
        self, nc: Client, kv: KeyValue, *, bucket: str, url: str, watch: ClosedWatch
    ) -> None:
        self._nc = nc
        self._watch = watch
        self._kv = kv
        self._js = nc.jetstream()
        self._subject = f"$KV.{bucket}."
        self._stream = f"KV_{bucket}"
        self._ttl = supports_message_ttl(nc)
        self.bucket = bucket
        self.url = url

    @classmethod
    async def open(
        cls, url: str, settings: StateSettings, nats_settings: NatsSettings, *, name: str
    ) -> KvStore:
        """Connect and create (or bind to) the bucket.

        Raises:
            Unavailable: If no server answers or JetStream is off.
        """
        watch = ClosedWatch()
        nc = await open_connection(url, name=name, settings=nats_settings, watch=watch)
        try:
            kv = await asyncio.wait_for(_bucket(nc, settings), settings.timeout)
        except (TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            msg = f"cannot open the KV bucket {settings.bucket} at {url}: {exc!r}"
            raise Unavailable(msg) from exc
        except BaseException:  # cancelled: do not leave a client reconnecting forever
            await asyncio.shield(nc.close())
            raise
        return cls(nc, kv, bucket=settings.bucket, url=url, watch=watch)

    def _require_connected(self) -> None:
        # nats-py would buffer the request until reconnected; fail fast instead.
        if not self._nc.is_connected:
            msg = f"the KV bucket {self.bucket} is unreachable: NATS is disconnected"
            raise Unavailable(msg)

    async def _entry(self, key: str) -> tuple[int, bytes | None]:
        """The key's last revision (0: never written) and its live value."""
        check_key(key)
        self._require_connected()
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            return (exc.entry.revision if exc.entry is not None else 0), None
        return entry.revision or 0, _live(entry.value or b"")

    async def get(self, key: str) -> bytes | None:
        """The value under `key`, or None."""
        return (await self._entry(key))[1]

    async def _publish(
        self, key: str, value: bytes, ttl: float | None, *, last: int | None
    ) -> bool:
        check_key(key)
        self._require_connected()
        headers = None if last is None else {_EXPECTED_LAST: str(last)}
        server_ttl = math.ceil(ttl + _TTL_SLACK) if ttl is not None and self._ttl else None
        try:
            await self._js.publish(
                self._subject + key,
                _encode((_expires(ttl), value)),
                headers=headers,
                msg_ttl=server_ttl,
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def put(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Store `value`, expiring after `ttl` seconds if given."""
        await self._publish(key, value, ttl, last=None)

    async def delete(self, key: str) -> None:
        """Purge `key` and its history."""
        check_key(key)
        self._require_connected()
        await self._kv.purge(key)

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None
    ) -> bool:
        """Store `value` if the live value is `expected`, atomically by revision."""
        revision, current = await self._entry(key)
        if current != expected:
            return False
        return await self._publish(key, value, ttl, last=revision)

    async def scan(self, prefix: str) -> list[str]:
        """Live keys under `prefix.`, sorted.

        The stream's subject list names every key written (deleted ones
        keep a purge marker); each is then read to keep only live values.
        (A KV watcher is not used: it may report the end of the initial
        values before it has delivered them all.)
        """
        check_key(prefix)
        self._require_connected()
        wanted = f"{self._subject}{prefix}.>"
        info = await self._js.stream_info(self._stream, subjects_filter=wanted)
        keys = [subject.removeprefix(self._subject) for subject in info.state.subjects or {}]
        reads = asyncio.Semaphore(_SCAN_READS)

        async def live(key: str) -> bool:
            async with reads:
                return (await self._entry(key))[1] is not None

        alive = await asyncio.gather(*(live(key) for key in keys))
        return sorted(key for key, ok in zip(keys, alive, strict=True) if ok)

    async def close(self) -> None:
        """Close the connection."""
        self._watch.expect()
        await self._nc.close()

    def describe(self) -> str:
        """The bucket and where it lives."""
        state = "connected" if self._nc.is_connected else "disconnected"
        return f"JetStream KV {self.bucket} at {self.url}, {state}"

    async def probe(self) -> str | None:
        """Why the bucket cannot serve now (its connection), or None."""
        return connection_problem(self._nc, f"the KV bucket {self.bucket}")

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the connection is closed for good."""
        self._watch.listen(callback)


async def _bucket(nc: Client, settings: StateSettings) -> KeyValue:
    """Create the bucket, or bind to it as it is if it exists with other settings."""
    js = nc.jetstream()
    config = KeyValueConfig(
        bucket=settings.bucket, history=1, replicas=settings.replicas, direct=True
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise
    logger.warning(
        "KV bucket %s exists with other settings than [state] asks for; using it as it is",
        settings.bucket,
    )
    return await js.key_value(settings.bucket)


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
            msg = f"cannot reach Redis at {settings.redis_url}: {exc!r}"
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
        return f"Redis at {self.url}"

    async def probe(self) -> str | None:
        """Why Redis cannot serve now (it does not answer a PING in time), or None."""
        try:
            await asyncio.wait_for(self._redis.ping(), _PROBE_TIMEOUT)
        except (TimeoutError, OSError, redis.exceptions.RedisError) as exc:
            return f"Redis at {self.url} does not answer: {str(exc) or type(exc).__name__}"
        return None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Never called: the client reconnects for each command, so it is never lost for good."""


def _milliseconds(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, math.ceil(ttl * _MS))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


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
