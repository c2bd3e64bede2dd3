"""Model workers on NATS `af.inf.<tier>`: streaming, typed errors, cancellation, lost workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from actors import tracing_from_settings
from bridges import NatsServer
from bridges.nats._wire import (
    Subjects,
    decode_reply_envelope,
    encode_reply_envelope,
    encode_request,
)
from bridges.workers._remote import RemoteBackend
from bridges.workers._worker import ModelWorker, serve_worker, worker_pool
from config import NatsSettings, TelemetrySettings, TierSettings, decode
from inference import InferencePool, ScriptedBackend, TierSpec
from messages import (
    BadRequest,
    GenerateRequest,
    GenerationStarted,
    Metadata,
    RequestTimeout,
    TokenChunk,
    Unavailable,
    new_message_id,
)
from tests.conftest import WAIT

SUBJECTS = Subjects("af")
REPLY = "one two three four five six seven eight"


def tier_settings(**backend: Any) -> TierSettings:
    raw = {
        "inference": {
            "tiers": [
                {
                    "name": "large",
                    "heartbeat": 0.05,
                    "backend": {
                        "kind": "scripted",
                        "model": "scripted-large",
                        "capacity": 3,
                        "context_length": 512,
                        "default_reply": REPLY,
                        **backend,
                    },
                }
            ]
        }
    }
    return decode(raw).inference.tiers[0]


def meta(timeout: float = 5.0) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def start_worker(nats_server: NatsServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[ModelWorker, Client]] = []

    async def start(**backend: Any) -> ModelWorker:
        tier = tier_settings(**backend)
        pool, model = worker_pool(tier)
        worker = ModelWorker(pool, model, tier="large", subjects=SUBJECTS, heartbeat=0.25)
        client = await nats.connect(nats_server.url)
        await worker.start(client)
        started.append((worker, client))
        return worker

    yield start
    for worker, client in started:
        await worker.close(grace=1)
        await client.close()


def remote_pool(
    nc: Client, *, small: bool = False, threshold: int = 3
) -> tuple[InferencePool, RemoteBackend]:
    backend = RemoteBackend(lambda: nc, SUBJECTS.inference("large"), heartbeat=0.25)
    tiers = [TierSpec(name="large", workers=[backend], breaker_threshold=threshold)]
    if small:
        local = ScriptedBackend(model="scripted-small", default="small answer")
        tiers.append(TierSpec(name="small", workers=[local]))
    return InferencePool(tiers), backend


async def test_a_generation_streams_from_a_worker_and_says_what_ran_it(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    await start_worker(token_delay=0.001)
    pool, backend = remote_pool(nc)
    chunks: list[TokenChunk] = []
    try:
        result = await pool.submit(GenerateRequest(prompt="hi"), meta(), on_chunk=chunks.append)
    finally:
        await backend.aclose()
    assert result.text == REPLY
    assert "".join(c.text for c in chunks) == REPLY
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert (result.backend, result.model, result.tier) == ("scripted", "scripted-large", "large")
    assert result.usage.completion_tokens == len(REPLY.split())
    # What the worker runs is learned from its first frame.
    assert (backend.capacity, backend.context_length) == (3, 512)
    assert pool.statistics().tiers[0].slots == 3


async def test_the_worker_checks_the_context_with_its_own_tokenizer(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    await start_worker()
    pool, backend = remote_pool(nc)
    long_prompt = " ".join(["word"] * 510)
    try:
        with pytest.raises(BadRequest, match="exceed"):
            await pool.submit(GenerateRequest(prompt=long_prompt, max_tokens=8), meta())
    finally:
        await backend.aclose()
    large = pool.statistics().tiers[0]
    assert (large.failures, large.breaker) == (0, "closed")


async def started_generation(
    pool: InferencePool,
) -> asyncio.Future[Any]:
    """A generation through `pool`, returned once its first chunk has arrived."""
    first = asyncio.Event()
    task = asyncio.ensure_future(
        pool.submit(GenerateRequest(prompt="hi"), meta(), on_chunk=lambda _c: first.set())
    )
    await asyncio.wait_for(first.wait(), WAIT)
    return task


async def test_cancelling_the_call_stops_the_generation_on_the_worker(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker(token_delay=0.05)
    pool, backend = remote_pool(nc)
    try:
        task = await started_generation(pool)
        assert worker.running == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(worker.pool.join(), WAIT)
    finally:
        await backend.aclose()
    assert worker.running == 0
    assert worker.pool.statistics().tiers[0].cancelled == 1


class _CancelsOnceSent:
    """The caller's connection; the call is cancelled the moment its request is out.

    So the cancellation always comes before the worker's first frame.
    """

    def __init__(self, nc: Client, subject: str) -> None:
        self._nc = nc
        self._subject = subject

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        await self._nc.publish(subject, payload, **kwargs)
        if subject == self._subject:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()


async def test_a_call_cancelled_before_the_worker_took_it_is_cancelled_there_too(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker(token_delay=0.25)  # eight tokens: 2 s if nobody stops it
    subject = SUBJECTS.inference("large")
    sending = _CancelsOnceSent(nc, subject)
    backend = RemoteBackend(lambda: sending, subject, heartbeat=0.25)  # type: ignore[arg-type,return-value]
    pool = InferencePool([TierSpec(name="large", workers=[backend])])
    try:
        with pytest.raises(RequestTimeout, match="cancelled"):
            await pool.submit(GenerateRequest(prompt="hi"), meta())
        started = time.monotonic()
        while worker.pool.statistics().tiers[0].cancelled == 0:
            assert time.monotonic() - started < 1.0, "the worker generated on"
            await asyncio.sleep(0.01)
        await asyncio.wait_for(worker.pool.join(), WAIT)
    finally:
        await backend.aclose()
    assert worker.running == 0
    assert pool.statistics().tiers[0].cancelled == 1


async def test_no_worker_counts_against_the_breaker_and_then_work_degrades(nc: Client) -> None:
    pool, backend = remote_pool(nc, small=True, threshold=2)
    request = GenerateRequest(prompt="hi", may_degrade=True)
    try:
        for _ in range(2):
            with pytest.raises(Unavailable, match="large worker failed: NoWorkers"):
                await pool.submit(request, meta())
        result = await pool.submit(request, meta())
    finally:
        await backend.aclose()
    assert (result.tier, result.degraded, result.text) == ("small", True, "small answer")
    large = pool.statistics().tiers[0]
    assert (large.failures, large.breaker) == (2, "open")


async def test_a_worker_that_falls_silent_is_a_worker_failure(nc: Client) -> None:
    started = GenerationStarted(
        worker="mute",
        control="af.inf.large.ctl.mute",
        backend="scripted",
        model="mute",
        capacity=1,
        context_length=64,
        heartbeat=0.05,
    )

    async def take_and_go_quiet(msg: Any) -> None:
        await nc.publish(msg.reply, encode_reply_envelope(started))

    await nc.subscribe(SUBJECTS.inference("large"), queue="large", cb=take_and_go_quiet)
    pool, backend = remote_pool(nc)
    try:
        with pytest.raises(Unavailable, match="large worker failed: WorkerLost"):
            await pool.submit(GenerateRequest(prompt="hi"), meta())
    finally:
        await backend.aclose()
    assert pool.statistics().tiers[0].failures == 1


async def test_a_malformed_request_to_a_worker_gets_bad_request(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    await start_worker()
    reply = await nc.request(SUBJECTS.inference("large"), b"\x93not a request", timeout=WAIT)
    with pytest.raises(BadRequest, match="malformed"):
        decode_reply_envelope(reply.data)


async def test_a_worker_answers_an_expired_request_with_a_timeout_not_a_generation(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker()
    expired = Metadata(id=new_message_id(), deadline=time.time() - 1)
    inbox = nc.new_inbox()
    frames = await nc.subscribe(inbox)
    await nc.publish(
        SUBJECTS.inference("large"), encode_request(GenerateRequest(prompt="hi"), expired), inbox
    )
    started = decode_reply_envelope((await frames.next_msg(WAIT)).data)
    assert isinstance(started, GenerationStarted)
    with pytest.raises(TimeoutError):
        decode_reply_envelope((await frames.next_msg(WAIT)).data)
    assert worker.pool.statistics().admissions == 0


async def test_closing_a_worker_lets_running_generations_finish(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker(token_delay=0.01)
    pool, backend = remote_pool(nc)
    try:
        task = await started_generation(pool)
        await worker.close(grace=WAIT)
        result = await asyncio.wait_for(task, WAIT)
        assert result.text == REPLY
        with pytest.raises(Unavailable, match="NoWorkers"):
            await pool.submit(GenerateRequest(prompt="hi"), meta())
    finally:
        await backend.aclose()


async def test_a_generation_on_a_worker_continues_the_callers_trace(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker()
    worker_tracing = tracing_from_settings(TelemetrySettings(traces="memory"), node="worker")
    caller_tracing = tracing_from_settings(TelemetrySettings(traces="memory"), node="caller")
    assert worker_tracing is not None
    assert caller_tracing is not None
    worker.pool.tracing = worker_tracing
    pool, backend = remote_pool(nc)
    pool.tracing = caller_tracing
    try:
        await pool.submit(GenerateRequest(prompt="hi"), meta())
    finally:
        await backend.aclose()
    assert caller_tracing.exporter is not None
    assert worker_tracing.exporter is not None
    [caller] = caller_tracing.exporter.get_finished_spans()
    [served] = worker_tracing.exporter.get_finished_spans()
    assert served.context.trace_id == caller.context.trace_id
    assert served.parent is not None
    assert served.parent.span_id == caller.context.span_id
    assert served.attributes["gen_ai.system"] == "scripted"


async def test_a_second_request_with_a_running_id_is_answered_not_dropped(
    nc: Client, start_worker: Callable[..., Any]
) -> None:
    await start_worker(token_delay=0.05)
    request_meta = meta()
    body = encode_request(GenerateRequest(prompt="hi"), request_meta)
    first, second = nc.new_inbox(), nc.new_inbox()
    first_frames = await nc.subscribe(first)
    second_frames = await nc.subscribe(second)
    await nc.publish(SUBJECTS.inference("large"), body, first)
    assert isinstance(
        decode_reply_envelope((await first_frames.next_msg(WAIT)).data), GenerationStarted
    )
    await nc.publish(SUBJECTS.inference("large"), body, second)
    with pytest.raises(Unavailable, match="already runs"):
        decode_reply_envelope((await second_frames.next_msg(WAIT)).data)


async def test_a_worker_whose_connection_is_closed_for_good_exits_with_unavailable(
    nats_server: NatsServer,
) -> None:
    ready: asyncio.Queue[ModelWorker] = asyncio.Queue()
    serving = asyncio.create_task(
        serve_worker(tier_settings(), NatsSettings(), nats_server.url, on_ready=ready.put_nowait)
    )
    worker = await asyncio.wait_for(ready.get(), WAIT)
    # A protocol error from the server (here: a subject over its control line)
    # makes nats-py close the connection for good.
    connection = worker._nc
    assert connection is not None
    await connection.publish("x" * 5000, b"")
    with pytest.raises(Unavailable, match="closed"):
        await asyncio.wait_for(serving, WAIT)
