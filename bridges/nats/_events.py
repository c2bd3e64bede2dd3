"""Domain events on JetStream: publish with dedup, durable consumers, dead letters.

Each (agent type, event type) pair is one durable pull consumer named
`<agent type>_<Event>`; every node that runs agents of that type pulls from
it, so an event is handled by one of them. An event is acked only after a
handler returned; a failure naks it with a delay from `events.backoff`;
after `events.max_deliver` deliveries the event goes to `<prefix>.dlq.<Event>`
with the error in its headers, and is terminated. The delivery limit is
enforced here rather than by the server, so an event whose last delivery
was lost with a crashed node still reaches the dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from actors import Call, Reply
from bridges.nats._serving import headers_size
from bridges.nats._streams import hazards
from bridges.nats._wire import (
    ERROR_CODE,
    ERROR_MESSAGE,
    MSG_ID,
    check_token,
    error_code_of,
    event_headers,
    event_metadata,
)
from messages import (
    BadRequest,
    Event,
    Metadata,
    RequestTimeout,
    Unavailable,
    check_identifier,
    require_event,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from actors import Agent, TypeRef
    from bridges.nats._host import Host
    from config import EventSettings

logger: Final = logging.getLogger("actorfleet.events")

DELIVERY: Final = "Af-Delivery"
_FETCH_WAIT: Final = 1.0
_RETRY_PAUSE: Final = 0.1
_STREAM_IN_USE: Final = 10058
_ACK_MARGIN: Final = 5.0
_PER_AGENT: Final = 2
_EWMA_WEIGHT: Final = 0.2
# JetStream acknowledges a stored message in milliseconds; never wait longer than this.
_PUBLISH_ACK_MAX: Final = 30.0
# Headers that steer how JetStream stores a publish (expected stream, sequence, ...).
_JETSTREAM_HEADER_PREFIX: Final = "nats-"
_ERROR_TEXT_MAX: Final = 512


class EventStatistics(msgspec.Struct, kw_only=True):
    """Counters of one node's event handling."""

    published: int = 0
    duplicates: int = 0
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0


class Outcome(enum.StrEnum):
    """How the handling of one delivered event was settled."""

    ACKED = "acked"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


SettleListener = Callable[[str, int, Outcome], None]
PublishListener = Callable[[str, int], None]


class Flow:
    """Events one consumer has handed out and not yet settled (loop thread only).

    It learns how long an agent takes per event (an EWMA of the time from
    hand-out to settle, divided by how many were ahead of it per agent) and
    hands out no more than the local agents can start well within the
    handling deadline. The bridge counts these events too, so a graceful
    close waits for their acks.
    """

    def __init__(self, bridge: Host, settings: EventSettings) -> None:
        self.bridge = bridge
        self.settings = settings
        self.in_flight = 0
        self.per_event_s: float | None = None
        self._room = asyncio.Event()

    def limit(self, members: int) -> int:
        """Events to have out at once with `members` live local agents."""
        if members == 0:
            return 0
        # Until it has measured an agent, a consumer starts small.
        per_agent = _PER_AGENT
        if self.per_event_s is not None:
            # Keep the last event's wait under half its handling deadline.
            affordable = self.settings.handler_timeout / (2 * max(self.per_event_s, 1e-6))
            per_agent = max(_PER_AGENT, int(min(affordable, self.settings.max_in_flight)))
        return min(self.settings.max_in_flight, members * per_agent)

    def take(self) -> tuple[float, int]:
        """Count one event out; returns what `release` needs to learn from it."""
        self.in_flight += 1
        self.bridge.track(+1)
        return time.monotonic(), self.in_flight

    def learn(self, taken: tuple[float, int], members: int) -> None:
        """Learn from a handled event how long an agent takes per event."""
        started, position = taken
        sample = (time.monotonic() - started) / max(1.0, position / max(members, 1))
        if self.per_event_s is None:
            self.per_event_s = sample
        else:
            self.per_event_s += _EWMA_WEIGHT * (sample - self.per_event_s)

    def release(self) -> None:
        """Count one event settled."""
        self.in_flight -= 1
        self.bridge.track(-1)
        self._room.set()

    async def wait_for_room(self) -> None:
        self._room.clear()
        await self._room.wait()


class EventRouter:
    """The bridge's JetStream side: streams, publishing, consumers."""

    def __init__(self, bridge: Host, settings: EventSettings) -> None:
        self.bridge = bridge
        self.settings = settings
        self.statistics = EventStatistics()
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._names: dict[type[Event], str] = {}
        self._subscriptions: list[JetStreamContext.PullSubscription] = []
        self._stopping = False
        self._listeners: list[SettleListener] = []
        self._publish_listeners: list[PublishListener] = []

    def add_listener(self, listener: SettleListener) -> None:
        """Call `listener(subject, stream_sequence, outcome)` on the loop after each settle."""
        self._listeners.append(listener)

    def add_publish_listener(self, listener: PublishListener) -> None:
        """Call `listener(subject, stream_sequence)` on the loop after each new event is stored."""
        self._publish_listeners.append(listener)

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of the live connection."""
        if self._js is None:
            msg = "JetStream is not set up"
            raise Unavailable(msg)
        return self._js

    async def start(self) -> None:
        """Create or update the event and dead-letter streams."""
        self._stopping = False
        self._js = self.bridge.nc.jetstream()
        subjects = self.bridge.subjects
        s = self.settings
        for name, subject in (
            (s.stream, subjects.all_events()),
            (s.dead_letter_stream, subjects.all_dead_letters()),
        ):
            await self._ensure_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    num_replicas=s.replicas,
                    duplicate_window=s.duplicate_window,
                )
            )

    async def _ensure_stream(self, config: StreamConfig) -> None:
        """Create the stream, or bring an existing one to `config` if it differs.

        A node credential may not update streams (only the admin's may):
        then the stream is used as it is, with a warning.
        """
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_IN_USE:
                raise
        else:
            return
        held = (await self.js.stream_info(str(config.name))).config
        dangers = hazards(held)
        if dangers:
            msg = (
                f"the stream {config.name} exists, and {'; '.join(dangers)}:"
                " an admin must recreate it"
            )
            raise Unavailable(msg)
        wanted = (sorted(config.subjects or []), config.num_replicas, config.duplicate_window)
        if (sorted(held.subjects or []), held.num_replicas, held.duplicate_window) == wanted:
            return
        try:
            await self.js.update_stream(config)
        except (nats.errors.TimeoutError, nats.js.errors.Error) as exc:
            logger.warning(
                "stream %s exists with other settings and cannot be updated here (%s);"
                " using it as it is (an admin credential can update it)",
                config.name,
                type(exc).__name__,
            )

    async def stop(self) -> None:
        """Stop pulling; events handed out but not settled are redelivered later."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # Unsubscribe rather than drain: a pull subscription's queue may hold
        # status messages that no fetch will read, and drain would wait on them.
        for subscription in self._subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        self._subscriptions.clear()

    async def publish(self, event: Event, body: bytes, meta: Metadata) -> bool:
        """Store an encoded event; True if stored, False if its id was a duplicate.

        Raises:
            Unavailable: If JetStream does not take it.
            RequestTimeout: If no acknowledgement comes before the deadline.
        """
        event_name = self._event_name(require_event(event))
        headers = event_headers(meta)
        timeout = min(meta.deadline - time.time(), _PUBLISH_ACK_MAX)
        subject = self.bridge.subjects.event(event_name)
        try:
            ack = await self.js.publish(subject, body, timeout=timeout, headers=headers)
        except (nats.errors.TimeoutError, TimeoutError):
            msg = f"{event_name} {meta.id} not acknowledged within {timeout:.3f} s"
            raise RequestTimeout(msg) from None
        except (nats.errors.Error, OSError) as exc:
            msg = f"cannot store {event_name} {meta.id}: {exc}"
            raise Unavailable(msg) from exc
        if ack.duplicate:
            self.statistics.duplicates += 1
            return False
        self.statistics.published += 1
        for listener in self._publish_listeners:
            listener(subject, ack.seq)
        return True

    def _event_name(self, event: Event) -> str:
        cls = type(event)
        name = self._names.get(cls)
        if name is None:
            name = self._names[cls] = check_token(cls.__name__, what="event type")
        return name

    async def consume(
        self, agent_class: type[Agent], event_type: type[Event], local: TypeRef
    ) -> None:
        """Start the durable consumer that feeds `event_type` to local agents."""
        event_name = check_token(event_type.__name__, what="event type")
        durable = f"{agent_class.agent_type}_{event_name}"
        s = self.settings
        subject = self.bridge.subjects.event(event_name)
        # Create, or update an existing durable to the current settings.
        await self.js.add_consumer(
            s.stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=s.handler_timeout + _ACK_MARGIN,
                max_ack_pending=s.max_in_flight * 16,
            ),
        )
        subscription = await self.js.pull_subscribe_bind(durable=durable, stream=s.stream)
        self._subscriptions.append(subscription)
        task = asyncio.ensure_future(self._pull(subscription, event_type, local))
        self._tasks.append(task)

    async def _pull(
        self,
        subscription: JetStreamContext.PullSubscription,
        event_type: type[Event],
        local: TypeRef,
    ) -> None:
        """Fetch no more events than the local agents can start soon.

        Each live agent of the type gets at most `_PER_AGENT` events at a time
        (one running, one waiting), so an event's handling deadline is not
        spent queueing behind others, and events this node cannot take stay
        on the server for other nodes. With no agent here, nothing is fetched.
        """
        decoder = msgspec.msgpack.Decoder(event_type)
        flow = Flow(self.bridge, self.settings)
        while not self._stopping:
            members = len(self.bridge.runtime.directory.members(local.name))
            limit = flow.limit(members)
            if limit == 0:
                await asyncio.sleep(_RETRY_PAUSE)  # an agent restarting: look again soon
                continue
            wanted = limit - flow.in_flight
            if wanted <= 0:
                await flow.wait_for_room()
                continue
            try:
                messages = await subscription.fetch(wanted, timeout=_FETCH_WAIT)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            except (nats.errors.Error, OSError) as exc:
                logger.debug("event fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            for msg in messages:
                self._dispatch(msg, decoder, local, flow, flow.take())

    def _dispatch(
        self,
        msg: Msg,
        decoder: msgspec.msgpack.Decoder[Any],
        local: TypeRef,
        free: Flow,
        taken: tuple[float, int],
    ) -> None:
        delivery = msg.metadata.num_delivered or 1
        s = self.settings
        try:
            event = decoder.decode(msg.data)
            meta = event_metadata(msg.headers, time.time() + s.handler_timeout, delivery)
        except msgspec.DecodeError as exc:
            bad = BadRequest(f"cannot decode the event: {exc}")
            self._settle_soon(msg, bad, final=True, free=free)
            return
        except BadRequest as bad:
            self._settle_soon(msg, bad, final=True, free=free)
            return
        if delivery > s.max_deliver:
            lost = RequestTimeout(f"delivered {delivery - 1} times without an answer")
            self._settle_soon(msg, lost, final=True, free=free)
            return
        reply: Reply[Any] = Reply(meta.deadline)
        # The flow bounds what is handed out (within the handling deadline): not refused again.
        if not local.deliver_local(Call(event, meta, reply), admitted=True):
            reply.fail(Unavailable(f"no agent of type {local.name} on this node"))
        learn = (taken, len(local.members()))
        reply.add_done_callback(
            lambda r: self.bridge.outbox.put(self._on_handled, msg, r, free, learn)
        )

    async def _on_handled(
        self, msg: Msg, reply: Reply[Any], free: Flow, learn: tuple[tuple[float, int], int]
    ) -> None:
        result = reply.result()
        if isinstance(result, BaseException):
            self.statistics.failed += 1
            final = (msg.metadata.num_delivered or 1) >= self.settings.max_deliver
            await self._settle(msg, result, final=final, free=free)
        else:
            free.learn(*learn)
            self.statistics.handled += 1
            await self._settle(msg, None, final=True, free=free)

    def _settle_soon(self, msg: Msg, error: BaseException, *, final: bool, free: Flow) -> None:
        self.bridge.outbox.put(functools.partial(self._settle, msg, error, final=final, free=free))

    async def _settle(
        self, msg: Msg, error: BaseException | None, *, final: bool, free: Flow
    ) -> None:
        """Ack, nak or dead-letter; runs in the bridge's outbox (acks and naks are quick)."""
        if error is not None and final:
            # Dead-lettering waits for JetStream: its own task, off the outbox.
            self.bridge.spawn(self._dead_letter_and_term(msg, error, free))
            return
        try:
            if error is None:
                await msg.ack()
                outcome = Outcome.ACKED
            else:
                backoff = self.settings.backoff or [0.0]
                delivery = msg.metadata.num_delivered or 1
                await msg.nak(delay=backoff[min(delivery, len(backoff)) - 1])
                outcome = Outcome.RETRY
        except (nats.errors.Error, OSError) as exc:
            # Unsettled: JetStream redelivers it after the ack wait.
            logger.warning("could not settle event %s: %s", msg.subject, exc)
            return
        finally:
            free.release()
        self._notify(msg, outcome)

    async def _dead_letter_and_term(self, msg: Msg, error: BaseException, free: Flow) -> None:
        try:
            await self._dead_letter(msg, error)
            await msg.term()
        except (nats.errors.Error, OSError) as exc:
            logger.warning("could not dead-letter event %s: %s", msg.subject, exc)
            return
        finally:
            free.release()
        self._notify(msg, Outcome.DEAD_LETTER)

    def _notify(self, msg: Msg, outcome: Outcome) -> None:
        if not self._listeners:
            return
        sequence = msg.metadata.sequence.stream
        for listener in self._listeners:
            listener(msg.subject, sequence, outcome)

    async def _dead_letter(self, msg: Msg, error: BaseException) -> None:
        event_name = msg.subject.rsplit(".", 1)[-1]
        body, headers = self._dead_letter_message(msg, error)
        await self.js.publish(self.bridge.subjects.dead_letter(event_name), body, headers=headers)
        self.statistics.dead_lettered += 1
        logger.error("event %s dead-lettered: %s", msg.subject, error)

    def _dead_letter_message(self, msg: Msg, error: BaseException) -> tuple[bytes, dict[str, str]]:
        """The dead letter's body and headers, within the server's `max_payload`.

        Over `max_payload` the server closes the connection, and the event
        would come back to do it again: the event's own headers are left out
        first, then its body (which stays in the event stream, by sequence).
        """
        original = msg.headers or {}
        sequence = msg.metadata.sequence.stream
        ours = {
            ERROR_CODE: error_code_of(error).value,
            ERROR_MESSAGE: str(error)[:_ERROR_TEXT_MAX],
            DELIVERY: str(msg.metadata.num_delivered or 1),
            MSG_ID: _dead_letter_id(original.get(MSG_ID), sequence),
        }
        # The event's own JetStream headers (`Nats-Expected-Stream`, ...) were
        # for its publish: on the dead letter's they would fail it, for ever.
        kept = {
            name: value
            for name, value in original.items()
            if not name.lower().startswith(_JETSTREAM_HEADER_PREFIX)
        }
        limit = self.bridge.max_payload
        for headers in ({**kept, **ours}, ours):
            if len(msg.data) + headers_size(headers) <= limit:
                return msg.data, headers
        note = (
            f"{ours[ERROR_MESSAGE][: _ERROR_TEXT_MAX // 2]} (its {len(msg.data)} bytes are too"
            f" many for a dead letter: see {self.settings.stream} sequence {sequence})"
        )
        return b"", {**ours, ERROR_MESSAGE: note}


def _dead_letter_id(original: str | None, sequence: int) -> str:
    """The dead letter's dedup id: from the event's own, unless that is not a valid id."""
    try:
        return f"dlq.{check_identifier(original or '', what=MSG_ID)}"
    except BadRequest:  # maybe why it is here: keep it out of the dead letter's id
        return f"dlq.seq-{sequence}"
