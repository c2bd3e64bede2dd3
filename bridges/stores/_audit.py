"""The audit log: an append-only JetStream stream that denies delete and purge.

Records (`messages.AuditRecord`) go to `<prefix>.audit.generation` and
`<prefix>.audit.erasure`, deduplicated by their content's SHA-256. Nothing
can remove them short of deleting the stream itself; personal data in them
is sealed per user (`actors.DataKeys`), so erasure destroys keys, not records.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

from bridges.nats._connect import ClosedWatch, connection_problem, open_connection
from bridges.nats._streams import hazards
from bridges.stores._loop_store import run_or_unavailable
from config import redact_url
from messages import AuditRecord, GenerationAudited, Unavailable, decode, encode

if TYPE_CHECKING:
    from nats.aio.client import Client

    from bridges._loop import IoLoop
    from config import NatsSettings, StateSettings

_STREAM_IN_USE: Final = 10058
_READ_WAIT: Final = 1.0

logger: Final = logging.getLogger("actorfleet.audit")


class JetStreamAudit:
    """The audit stream, on a connection of its own."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        prefix: str,
        url: str,
        timeout: float,
        watch: ClosedWatch,
    ) -> None:
        self._nc = nc
        self._watch = watch
        self._js = nc.jetstream(timeout=timeout)
        self.stream = stream
        self.prefix = prefix
        self.url = url

    @classmethod
    async def open(
        cls,
        url: str,
        settings: StateSettings,
        nats_settings: NatsSettings,
        *,
        name: str,
        create: bool = True,
    ) -> JetStreamAudit:
        """Connect and create (or update) the stream; with `create=False` only bind to it.

        Raises:
            Unavailable: If no server answers, or the stream cannot be made
                (or, not creating, does not exist).
        """
        watch = ClosedWatch()
        nc = await open_connection(url, name=name, settings=nats_settings, watch=watch)
        log = cls(
            nc,
            stream=settings.audit_stream,
            prefix=nats_settings.prefix,
            url=url,
            timeout=settings.timeout,
            watch=watch,
        )
        config = StreamConfig(
            name=settings.audit_stream,
            subjects=[f"{nats_settings.prefix}.audit.>"],
            num_replicas=settings.replicas,
            deny_delete=True,
            deny_purge=True,
        )
        try:
            if create:
                await log._ensure(config)
            else:
                await log._js.stream_info(settings.audit_stream)
        except (TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            where = f"{settings.audit_stream} at {redact_url(url)}"
            msg = f"cannot open the audit stream {where}: {exc!r}"
            raise Unavailable(msg) from exc
        except BaseException:  # cancelled: do not leave a client reconnecting forever
            await asyncio.shield(nc.close())
            raise
        return log

    async def _ensure(self, config: StreamConfig) -> None:
        """Create the stream; one that exists with other settings is used if it guards its records.

        Updating a stream is the admin's (the node user may not): only one
        that takes the audit subjects but allows delete or purge is updated.
        """
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_IN_USE:
                raise
        else:
            return
        found = (await self._js.stream_info(self.stream)).config
        dangers = hazards(found, records=True)
        if not dangers and set(config.subjects or ()) <= set(found.subjects or ()):
            logger.warning(
                "audit stream %s exists with other settings than [state] asks for;"
                " using it as it is (the NATS admin may update it)",
                self.stream,
            )
            return
        if [d for d in dangers if d != "allows delete or purge"]:
            # Made by someone else with settings that leak or drop records.
            msg = (
                f"the audit stream {self.stream} exists, and {'; '.join(dangers)}:"
                " an admin must recreate it"
            )
            raise Unavailable(msg)
        await self._js.update_stream(config)

    def subject(self, record: AuditRecord) -> str:
        """Where a record goes."""
        kind = "generation" if isinstance(record, GenerationAudited) else "erasure"
        return f"{self.prefix}.audit.{kind}"

    async def append(self, record: AuditRecord) -> None:
        """Store `record` (a record appended twice is stored once)."""
        if not self._nc.is_connected:
            msg = f"the audit stream {self.stream} is unreachable: NATS is disconnected"
            raise Unavailable(msg)
        body = encode(record)
        # Deduplicated by what it says, not by the request id: another node
        # that knew the id could otherwise publish first and have the real
        # record dropped as a duplicate.
        digest = hashlib.sha256(body).hexdigest()
        await self._js.publish(self.subject(record), body, headers={"Nats-Msg-Id": digest})

    async def records(self, *, last: int | None = None) -> AsyncIterator[AuditRecord]:
        """The records stored now (the `last` ones only, if given), oldest first."""
        info = await self._js.stream_info(self.stream)
        if info.state.messages == 0 or last == 0:
            return
        first = info.state.first_seq
        if last is not None:
            first = max(first, info.state.last_seq - last + 1)
        sub = await self._js.subscribe(
            f"{self.prefix}.audit.>",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=first),
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=_READ_WAIT)
                except nats.errors.TimeoutError:
                    return
                yield decode(msg.data, AuditRecord)  # type: ignore[arg-type]
                if msg.metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()

    async def close(self) -> None:
        """Close the connection."""
        self._watch.expect()
        await self._nc.close()

    def describe(self) -> str:
        """The stream and its connection."""
        state = "connected" if self._nc.is_connected else "disconnected"
        return f"audit stream {self.stream} at {redact_url(self.url)}, {state}"

    async def probe(self) -> str | None:
        """Why records cannot be stored now (the connection), or None."""
        return connection_problem(self._nc, f"the audit stream {self.stream}")

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the connection is closed for good."""
        self._watch.listen(callback)


class LoopAudit:
    """`actors.AuditLog` for actor threads over a `JetStreamAudit` on the loop."""

    def __init__(self, io: IoLoop, log: JetStreamAudit, *, timeout: float) -> None:
        self.io = io
        self.log = log
        self.timeout = timeout

    def append(self, record: AuditRecord) -> None:
        """Store `record`; return once stored.

        Raises:
            Unavailable: If it is not stored within the timeout.
        """
        what = f"storing audit record {record.request_id}"
        run_or_unavailable(self.io, self.log.append(record), timeout=self.timeout, what=what)
