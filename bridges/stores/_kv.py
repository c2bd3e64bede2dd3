"""A JetStream key-value bucket as a state store; values carry their absolute expiry."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig

from actors import check_key
from bridges.nats._connect import (
    ClosedWatch,
    connection_problem,
    open_connection,
    supports_message_ttl,
)
from config import redact_url
from messages import Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

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
            msg = f"cannot open the KV bucket {settings.bucket} at {redact_url(url)}: {exc!r}"
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
        return f"JetStream KV {self.bucket} at {redact_url(self.url)}, {state}"

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
