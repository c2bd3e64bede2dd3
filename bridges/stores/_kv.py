"""A JetStream key-value bucket as a state store; values carry their absolute expiry.

The audit data keys (`actors.DataKeys`) live in a bucket of their own beside
it, `<bucket>_KEYS`, which the embedded server's node user may write and
read a key at a time but not list (`bridges.nats._auth.node_permissions`).
"""

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
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.kv import KeyValue

from actors import check_key
from bridges.nats._auth import DATA_KEY_PREFIXES, data_keys_bucket
from bridges.nats._connect import (
    ClosedWatch,
    connection_problem,
    open_connection,
    supports_message_ttl,
)
from bridges.nats._streams import hazards
from config import redact_url
from messages import Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

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
_KV_DUPLICATE_WINDOW: Final = 120.0  # nats-py's, for a bucket without a TTL
_SCAN_READS: Final = 32  # reads in flight while a scan checks which keys are live


def _expires(ttl: float | None) -> float:
    return 0.0 if ttl is None else time.time() + ttl


def _live(data: bytes) -> bytes | None:
    expires, value = _decode(data)
    return None if expires and expires <= time.time() else value


class _Bucket:
    """One KV bucket: its handle, its subjects' prefix, its stream."""

    __slots__ = ("kv", "stream", "subject")

    def __init__(self, kv: KeyValue, name: str) -> None:
        self.kv = kv
        self.subject = f"$KV.{name}."
        self.stream = f"KV_{name}"


def _holds_data_key(key: str) -> bool:
    return f"{key}.".startswith(DATA_KEY_PREFIXES)


class KvStore:
    """A JetStream key-value bucket (history 1); values carry their expiry.

    Deleting leaves a delete marker in the key's one slot, so no earlier
    revision of it is kept. The keys of `actors.DataKeys` (`auditkey.user.`,
    `.id.`, `.ids.`) go to the data-key bucket (`keys`), the others to `kv`;
    `scan` lists `kv` only.
    """

    def __init__(
        self,
        nc: Client,
        kv: KeyValue,
        *,
        bucket: str,
        url: str,
        watch: ClosedWatch,
        keys: KeyValue | None = None,
    ) -> None:
        self._nc = nc
        self._watch = watch
        self._state = _Bucket(kv, bucket)
        self._keys = self._state if keys is None else _Bucket(keys, data_keys_bucket(bucket))
        self._js = nc.jetstream()
        self._ttl = supports_message_ttl(nc)
        self.bucket = bucket
        self.url = url

    def _bucket(self, key: str) -> _Bucket:
        return self._keys if _holds_data_key(key) else self._state

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
            kv, keys = await asyncio.wait_for(_buckets(nc, settings), settings.timeout)
            store = cls(nc, kv, bucket=settings.bucket, url=url, watch=watch, keys=keys)
            await asyncio.wait_for(store._move_data_keys(), settings.timeout)
        except (TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            msg = f"cannot open the KV bucket {settings.bucket} at {redact_url(url)}: {exc!r}"
            raise Unavailable(msg) from exc
        except BaseException:  # cancelled: do not leave a client reconnecting forever
            await asyncio.shield(nc.close())
            raise
        return store

    async def _move_data_keys(self) -> None:
        """Move data keys that an earlier version kept in the state bucket to their own.

        Each is created there unless present (a newer key wins), then deleted
        here, so erasure finds every key where it now looks.
        """
        state = self._state
        if self._keys is state:
            return
        for prefix in DATA_KEY_PREFIXES:
            wanted = f"{state.subject}{prefix}>"
            info = await self._js.stream_info(state.stream, subjects_filter=wanted)
            for subject in info.state.subjects or {}:
                key = subject.removeprefix(state.subject)
                try:
                    entry = await state.kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    continue  # a delete (or purge) marker
                if entry.value is not None:
                    await self._write(self._keys, key, entry.value, ttl=None, last=0)
                await state.kv.delete(key)

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
            entry = await self._bucket(key).kv.get(key)
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
        return await self._write(
            self._bucket(key), key, _encode((_expires(ttl), value)), ttl, last=last
        )

    async def _write(
        self, bucket: _Bucket, key: str, envelope: bytes, ttl: float | None, *, last: int | None
    ) -> bool:
        headers = None if last is None else {_EXPECTED_LAST: str(last)}
        server_ttl = math.ceil(ttl + _TTL_SLACK) if ttl is not None and self._ttl else None
        try:
            await self._js.publish(
                bucket.subject + key, envelope, headers=headers, msg_ttl=server_ttl
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
        """Delete `key`: no earlier revision of it is kept."""
        check_key(key)
        self._require_connected()
        # A delete marker: the bucket keeps one message per key, so the value goes.
        await self._bucket(key).kv.delete(key)

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
        keep a delete marker); each is then read to keep only live values.
        (A KV watcher is not used: it may report the end of the initial
        values before it has delivered them all.)
        """
        check_key(prefix)
        self._require_connected()
        bucket = self._state
        wanted = f"{bucket.subject}{prefix}.>"
        info = await self._js.stream_info(bucket.stream, subjects_filter=wanted)
        keys = [subject.removeprefix(bucket.subject) for subject in info.state.subjects or {}]
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


async def _buckets(nc: Client, settings: StateSettings) -> tuple[KeyValue, KeyValue]:
    """The state bucket and the data-key bucket, each created or bound to."""
    js = nc.jetstream()
    state = await _bucket(js, settings.bucket, settings.replicas)
    keys = await _bucket(js, data_keys_bucket(settings.bucket), settings.replicas, private=True)
    return state, keys


async def _bucket(
    js: JetStreamContext, name: str, replicas: int, *, private: bool = False
) -> KeyValue:
    """Create the bucket, or bind to it as it is if it exists with other settings.

    It is made as nats-py makes a KV bucket (history 1), but refuses
    roll-up headers: with them, one publish with `Nats-Rollup: all` from
    any connection that may write a key would wipe every key of the
    bucket (the data keys, and with them every sealed record). A delete
    marker needs none, and with history 1 it replaces the value.

    A `private` bucket is bound without asking for its stream's info, which
    the node user may not read (it would list the keys).
    """
    stream = f"KV_{name}"
    config = StreamConfig(
        name=stream,
        subjects=[f"$KV.{name}.>"],
        allow_direct=True,
        allow_rollup_hdrs=False,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=_KV_DUPLICATE_WINDOW,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise
        if private:
            # Its settings cannot be read here (that would list the keys), so
            # one made otherwise than this is not trusted with them.
            msg = f"the KV bucket {name} exists with other settings: an admin must recreate it"
            raise Unavailable(msg) from exc
        dangers = hazards((await js.stream_info(stream)).config)
        if dangers:
            msg = (
                f"the KV bucket {name} exists, and {'; '.join(dangers)}: an admin must recreate it"
            )
            raise Unavailable(msg) from exc
        logger.warning(
            "KV bucket %s exists with other settings than [state] asks for; using it as it"
            " is (one that takes roll-up headers can be wiped by any writer: an admin can"
            " set allow_rollup_hdrs = false)",
            name,
        )
        return await js.key_value(name)  # as it is: direct gets or not
    return KeyValue(name=name, stream=stream, pre=f"$KV.{name}.", js=js, direct=True)
