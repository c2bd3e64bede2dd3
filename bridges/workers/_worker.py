"""A model worker: one tier's model served on NATS `af.inf.<tier>` from its own process.

It runs the model behind a one-tier `InferencePool` (so requests are checked
against the model's own tokenizer and context, admitted by deadline and
priority, cut at the deadline and cancelled on request), and streams each
answer back as `bridges.workers._remote` describes. A node runs one such
process per GPU as a supervised child (`actorfleet worker`); a crash or a
CUDA fault then takes down that worker, not the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec
import nats
import nats.errors

from bridges.nats._connect import ClosedWatch, open_connection
from bridges.nats._wire import (
    Subjects,
    encode_error_envelope,
    encode_reply_envelope,
    envelope_decoder,
    open_envelope,
)
from inference import InferencePool, TierSpec, backend_from_settings
from messages import (
    AgentError,
    BadRequest,
    CancelGeneration,
    GenerateRequest,
    GenerationAlive,
    GenerationStarted,
    InternalError,
    Metadata,
    Unavailable,
    WorkerReady,
    decoder_for,
    encode,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from actors import Tracing
    from config import NatsSettings, TierSettings
    from inference import Backend

logger: Final = logging.getLogger("actorfleet.inference.worker")

_requests: Final = envelope_decoder(GenerateRequest)
_END: Final = object()
DEFAULT_GRACE: Final = 10.0


class _Run:
    """One generation in this worker: its task, reply subject and outgoing frames."""

    __slots__ = ("frames", "last_sent", "reply", "task")

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.frames: asyncio.Queue[object] = asyncio.Queue()
        self.last_sent = time.monotonic()
        self.task: asyncio.Task[None] | None = None


class ModelWorker:
    """Serves one model on `af.inf.<tier>` (queue group `<tier>`).

    Args:
        pool: A one-tier pool over the worker's backend.
        backend: That backend (what `GenerationStarted` reports).
        tier: The tier's name.
        subjects: The deployment's subjects.
        heartbeat: Seconds between `GenerationAlive` frames.
    """

    def __init__(
        self,
        pool: InferencePool,
        backend: Backend,
        *,
        tier: str,
        subjects: Subjects,
        heartbeat: float,
    ) -> None:
        self.pool = pool
        self.backend = backend
        self.tier = tier
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.subject = subjects.inference(tier)
        self.control = subjects.inference_control(tier, self.id)
        self.ready_subject = subjects.inference_ready(tier)
        self.heartbeat = heartbeat
        self._nc: Client | None = None
        self._requests: Subscription | None = None
        self._cancels: Subscription | None = None
        self._runs: dict[str, _Run] = {}
        self._beat: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Generations in progress."""
        return len(self._runs)

    def _started(self) -> GenerationStarted:
        return GenerationStarted(
            worker=self.id,
            control=self.control,
            backend=self.backend.name,
            model=self.backend.model,
            capacity=self.backend.capacity,
            context_length=self.backend.context_length,
            heartbeat=self.heartbeat,
        )

    async def start(self, nc: Client) -> None:
        """Subscribe for requests and cancellations, start the heartbeat, say so.

        `WorkerReady` goes out on `af.inf.<tier>.ready` once the server has
        the subscriptions, so whoever hears it can send requests at once.
        """
        self._nc = nc
        self._cancels = await nc.subscribe(self.control, cb=self._on_cancel)
        self._requests = await nc.subscribe(self.subject, queue=self.tier, cb=self._on_request)
        self._beat = asyncio.create_task(self._beat_forever())
        await nc.flush()
        ready = WorkerReady(
            worker=self.id,
            tier=self.tier,
            backend=self.backend.name,
            model=self.backend.model,
            capacity=self.backend.capacity,
        )
        await nc.publish(self.ready_subject, encode(ready))
        await nc.flush()

    async def close(self, *, grace: float = DEFAULT_GRACE) -> None:
        """Take no new requests; let running generations finish (bounded); stop."""
        if self._requests is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._requests.unsubscribe()
            self._requests = None
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        if self._cancels is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._cancels.unsubscribe()
        await self.pool.aclose()

    # -- requests -------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return  # nowhere to answer: not a generation request
        run = _Run(msg.reply)
        try:
            request, meta = open_envelope(_requests.decode(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._send(run, encode_error_envelope(BadRequest(f"malformed request: {exc}")))
            return
        except BadRequest as exc:
            await self._send(run, encode_error_envelope(exc))
            return
        if meta.id in self._runs:
            busy = Unavailable(f"a generation with id {meta.id} already runs on this worker")
            await self._send(run, encode_error_envelope(busy))
            return
        self._runs[meta.id] = run
        await self._send(run, encode_reply_envelope(self._started()))
        run.task = asyncio.create_task(self._generate(run, request, meta))

    async def _generate(self, run: _Run, request: GenerateRequest, meta: Metadata) -> None:
        sender = asyncio.create_task(self._relay(run))
        try:
            result = await self.pool.submit(request, meta, on_chunk=run.frames.put_nowait)
        except asyncio.CancelledError:
            # Cancelled by the caller (it is gone) or by close(): say so, in case it listens.
            run.frames.put_nowait(Unavailable("the generation was cancelled by the worker"))
        except AgentError as error:
            run.frames.put_nowait(error)
        except Exception as exc:
            logger.exception("the %s model failed", self.tier)
            run.frames.put_nowait(InternalError(f"the model failed: {type(exc).__name__}"))
        else:
            run.frames.put_nowait(result)
        finally:
            run.frames.put_nowait(_END)
            await sender
            self._runs.pop(meta.id, None)

    async def _relay(self, run: _Run) -> None:
        """Send the run's frames in order: chunks, then its one answer."""
        while (frame := await run.frames.get()) is not _END:
            if isinstance(frame, BaseException):
                await self._send(run, encode_error_envelope(frame))
            else:
                await self._send(run, encode_reply_envelope(frame))

    async def _send(self, run: _Run, body: bytes) -> None:
        if self._nc is None:
            return
        run.last_sent = time.monotonic()
        try:
            await self._nc.publish(run.reply, body)
        except nats.errors.Error as exc:
            logger.warning("could not answer on %s: %s", run.reply, exc)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = decoder_for(CancelGeneration).decode(msg.data)
        except msgspec.DecodeError:
            return
        run = self._runs.get(cancel.id)
        if run is not None and run.task is not None:
            run.task.cancel()

    async def _beat_forever(self) -> None:
        alive = encode_reply_envelope(GenerationAlive())
        while True:
            await asyncio.sleep(self.heartbeat / 2)
            quiet_since = time.monotonic() - self.heartbeat
            for run in list(self._runs.values()):
                if run.last_sent <= quiet_since:
                    await self._send(run, alive)


def worker_pool(tier: TierSettings) -> tuple[InferencePool, Backend]:
    """The one-tier pool a worker process runs its backend behind."""
    backend = backend_from_settings(tier.backend)
    spec = TierSpec(
        name=tier.name,
        workers=[backend],
        queue_bound=tier.queue_bound,
        breaker_threshold=tier.breaker_threshold,
        breaker_cooldown=tier.breaker_cooldown,
    )
    return InferencePool([spec]), backend


async def serve_worker(
    tier: TierSettings,
    nats_settings: NatsSettings,
    url: str,
    *,
    on_ready: Callable[[ModelWorker], None] | None = None,
    tracing: Tracing | None = None,
) -> None:
    """Run one worker of `tier` until SIGTERM or SIGINT, then stop gracefully.

    `on_ready(worker)` is called once it serves. With `tracing`, each
    generation is a span whose parent is the caller's (from the request).

    Raises:
        Unavailable: If no NATS server answers within `nats.connect_timeout`,
            or the connection is closed for good (the process then exits
            non-zero and its supervisor starts a new one).
        ConfigError: If the backend cannot run here (no CUDA, no `gpu` extra).
    """
    pool, backend = worker_pool(tier)
    pool.tracing = tracing
    name = f"actorfleet-worker-{tier.name}-{os.getpid()}"
    watch = ClosedWatch()
    try:
        nc = await open_connection(url, name=name, settings=nats_settings, watch=watch)
    except Unavailable:
        await pool.aclose()
        raise
    worker = ModelWorker(
        pool,
        backend,
        tier=tier.name,
        subjects=Subjects(nats_settings.prefix),
        heartbeat=tier.heartbeat,
    )
    stop = asyncio.Event()
    lost: list[str] = []

    def on_lost(reason: str) -> None:
        lost.append(reason)
        stop.set()

    watch.listen(on_lost)  # closed for good: exit non-zero, so the supervisor restarts us
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await worker.start(nc)
        logger.info(
            "worker %s serves %s (%s %s, %d slots)",
            worker.id,
            worker.subject,
            backend.name,
            backend.model,
            backend.capacity,
        )
        if on_ready is not None:
            on_ready(worker)
        await stop.wait()
    finally:
        watch.expect()
        await worker.close(grace=nats_settings.drain_timeout)
        with contextlib.suppress(nats.errors.Error):
            await nc.drain()
        if tracing is not None:
            tracing.shutdown()
    if lost:
        raise Unavailable(lost[0])
