"""A tier's model workers in other processes, reached over NATS `af.inf.<tier>`.

The pool sends a `GenerateRequest` (in the request envelope) to the tier's
subject with a reply subject of its own; one worker of the queue group
takes it and streams frames back to that subject, each a reply envelope:

    GenerationStarted   who took it, where to cancel it, what it runs
    TokenChunk ...      the text as it is produced
    GenerationAlive     every `heartbeat` seconds while it runs
    GenerateResult      the end (or an ErrorReply)

Silence for `SILENT_BEATS` heartbeats means the worker is gone (its process
died, or the network lost it): the generation fails as a worker failure, so
the tier's breaker counts it. Cancelling the call sends `CancelGeneration`
to the worker, which stops the generation and frees its slot there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import nats.errors

from bridges.nats._inbox import Inbox, no_responders
from bridges.nats._wire import decode_reply_envelope, encode_request
from inference import Emit, Generation
from messages import (
    AgentError,
    CancelGeneration,
    GenerateRequest,
    GenerateResult,
    GenerationAlive,
    GenerationStarted,
    InternalError,
    Metadata,
    TokenChunk,
    encode,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

logger: Final = logging.getLogger("actorfleet.inference.remote")

NAME: Final = "remote"
SILENT_BEATS: Final = 3
# A context nobody has reported yet: the worker checks requests against its own.
UNKNOWN_CONTEXT: Final = 1 << 30


class NoWorkers(ConnectionError):
    """Raised when no worker of the tier is subscribed to its subject."""


class WorkerLost(ConnectionError):
    """Raised when a worker stops answering in the middle of a generation."""


class WorkerFailed(RuntimeError):
    """Raised when a worker reports that its model failed (`internal`)."""


class RemoteBackend:
    """Implements `inference.Backend` by sending each generation to a worker over NATS.

    What the workers run (backend, model, capacity, context) is learned
    from the first frame of each answer; the constructor's values are the
    assumptions until then.

    Args:
        connection: Returns the node's live NATS connection; raises
            `Unavailable` while there is none.
        subject: The tier's subject, `af.inf.<tier>`.
        model: The model name to show until a worker has answered.
        capacity: Generations one worker is assumed to run at once.
        context_length: The context assumed; 0: unknown (the worker checks).
        heartbeat: The heartbeat assumed until a worker states its own.
    """

    def __init__(
        self,
        connection: Callable[[], Client],
        subject: str,
        *,
        model: str = NAME,
        capacity: int = 1,
        context_length: int = 0,
        heartbeat: float = 0.5,
    ) -> None:
        self._connection = connection
        self.subject = subject
        self._backend = NAME
        self._model = model
        self._capacity = capacity
        self._context_length = context_length or UNKNOWN_CONTEXT
        self._heartbeat = heartbeat
        self._inbox: Inbox | None = None
        self._cancelling: set[asyncio.Future[None]] = set()

    @property
    def name(self) -> str:
        """The workers' backend (`remote` until one has answered)."""
        return self._backend

    @property
    def model(self) -> str:
        """The workers' model."""
        return self._model

    @property
    def capacity(self) -> int:
        """Generations one worker runs at once."""
        return self._capacity

    @property
    def context_length(self) -> int:
        """The workers' context (very large while unknown: the worker checks)."""
        return self._context_length

    def count_tokens(self, request: GenerateRequest) -> int:  # noqa: ARG002 - the protocol's
        """0: the tokenizer is the worker's, which checks the context itself."""
        return 0

    async def generate(self, request: GenerateRequest, emit: Emit, *, meta: Metadata) -> Generation:
        """Send the request to a worker of the tier and relay its stream.

        Raises:
            AgentError: The worker's typed answer (bad request, overloaded, ...);
                `Unavailable` if this node has no NATS connection.
            NoWorkers: No worker is subscribed.
            WorkerLost: The worker fell silent.
            WorkerFailed: The worker's model failed.
        """
        nc = self._connection()
        inbox = await self._inbox_for(nc)
        reply, frames = await inbox.open()
        started = time.monotonic()
        first_token_s: float | None = None
        control: str | None = None
        try:
            await nc.publish(self.subject, encode_request(request, meta), reply=reply)
            while True:
                frame = self._decode(await self._next(frames))
                match frame:
                    case GenerationStarted():
                        control = frame.control
                        self._learn(frame)
                    case TokenChunk():
                        if first_token_s is None:
                            first_token_s = time.monotonic() - started
                        emit(frame.text)
                    case GenerationAlive():
                        pass
                    case GenerateResult():
                        return Generation(
                            text=frame.text,
                            finish_reason=frame.finish_reason,
                            prompt_tokens=frame.usage.prompt_tokens,
                            completion_tokens=frame.usage.completion_tokens,
                            first_token_s=(
                                time.monotonic() - started
                                if first_token_s is None
                                else first_token_s
                            ),
                        )
                    case _:
                        msg = f"a worker of {self.subject} sent {type(frame).__name__}"
                        raise WorkerFailed(msg)
        except asyncio.CancelledError:
            if control is not None:
                await self._cancel(nc, control, meta.id)
            else:
                # Sent, but not yet taken: cancel it once its worker says where.
                self._cancel_once_started(nc, inbox, reply, frames, meta.id)
                reply = ""
            raise
        finally:
            if reply:
                inbox.done(reply)

    async def _next(self, frames: asyncio.Queue[Msg]) -> Msg:
        silence = SILENT_BEATS * self._heartbeat
        try:
            return await asyncio.wait_for(frames.get(), silence)
        except TimeoutError:
            msg = f"the worker of {self.subject} said nothing for {silence:.1f} s"
            raise WorkerLost(msg) from None

    def _decode(self, msg: Msg) -> object:
        if no_responders(msg):
            msg_text = f"no worker serves {self.subject}"
            raise NoWorkers(msg_text)
        try:
            return decode_reply_envelope(msg.data)
        except InternalError as exc:
            # The worker's model failed, or it sent garbage: the tier's fault.
            raise WorkerFailed(str(exc)) from exc

    def _learn(self, started: GenerationStarted) -> None:
        self._backend = started.backend
        self._model = started.model
        self._capacity = max(started.capacity, 1)
        self._context_length = started.context_length or UNKNOWN_CONTEXT
        self._heartbeat = started.heartbeat

    async def _cancel(self, nc: Client, control: str, request_id: str) -> None:
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(control, encode(CancelGeneration(id=request_id)))

    def _cancel_once_started(
        self,
        nc: Client,
        inbox: Inbox,
        reply: str,
        frames: asyncio.Queue[Msg],
        request_id: str,
    ) -> None:
        """Cancel a generation whose `GenerationStarted` has not arrived yet.

        The request went to the queue group, so only the worker's first
        frame says where to cancel it; without this, a caller gone that
        early would leave the worker generating until `max_tokens`.
        Waits no longer than a lost worker would take to notice.
        """

        async def cancel() -> None:
            try:
                async with asyncio.timeout(SILENT_BEATS * self._heartbeat):
                    while True:
                        frame = self._decode(await frames.get())
                        if isinstance(frame, GenerationStarted):
                            await self._cancel(nc, frame.control, request_id)
                            return
                        if not isinstance(frame, TokenChunk | GenerationAlive):
                            return  # it has ended already
            except (TimeoutError, ConnectionError, RuntimeError, AgentError):
                return  # no worker took it, it has failed, or it is gone
            finally:
                inbox.done(reply)

        task = asyncio.ensure_future(cancel())
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _inbox_for(self, nc: Client) -> Inbox:
        # A new bridge brings a new connection: its inbox goes with it.
        if self._inbox is None or self._inbox.nc is not nc:
            if self._inbox is not None:
                await self._inbox.close()
            self._inbox = Inbox(nc)
        return self._inbox

    async def aclose(self) -> None:
        """Stop listening for frames (and waiting to cancel what was not yet taken)."""
        for task in list(self._cancelling):
            task.cancel()
        if self._inbox is not None:
            await self._inbox.close()
            self._inbox = None
