"""The exllamav2 engine's thread and loop hand-offs, with a stand-in generator (no GPU).

The stand-in has the dynamic generator's interface (enqueue, iterate,
cancel, clear_queue, num_remaining_jobs) and emits events shaped like
exllamav2's: text pieces, then an end-of-sequence event with token counts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import queue
import threading
import time
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from inference import InferencePool, TierSpec
from inference._exllamav2 import Engine, ExLlamaV2Backend, GeneratorFailed
from messages import (
    ConfigError,
    FinishReason,
    GenerateRequest,
    Metadata,
    Unavailable,
    new_message_id,
    output_schema,
)


class FakeJob:
    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self.words = ["Hello", " there", " friend"][: fields["max_new_tokens"]]


class FakeGenerator:
    def __init__(self) -> None:
        self.jobs: list[FakeJob] = []
        self.finished: list[FakeJob] = []
        self.cancelled: list[FakeJob] = []
        self.cancel_fails = False
        self.enqueued = threading.Event()
        self.cancel_called = threading.Event()

    def num_remaining_jobs(self) -> int:
        return len(self.jobs)

    def enqueue(self, job: FakeJob) -> None:
        self.jobs.append(job)
        self.enqueued.set()

    def cancel(self, job: FakeJob) -> None:
        self.cancel_called.set()
        if self.cancel_fails:
            msg = "defrag failed"
            raise RuntimeError(msg)
        self.cancelled.append(job)
        self.jobs.remove(job)

    def clear_queue(self) -> None:
        self.jobs.clear()

    def forward_pass(self) -> list[dict[str, Any]]:
        """A forward pass that produces nothing yet (a job that never ends)."""
        time.sleep(0.001)  # simulated GPU work
        return []

    def iterate(self) -> list[dict[str, Any]]:
        time.sleep(0.001)  # simulated GPU work
        events: list[dict[str, Any]] = []
        for job in list(self.jobs):
            ident = job.fields["identifier"]
            if job.words:
                events.append({"identifier": ident, "eos": False, "text": job.words.pop(0)})
            else:
                self.jobs.remove(job)
                self.finished.append(job)
                reason = "max_new_tokens" if job.fields["max_new_tokens"] < 3 else "stop_token"
                events.append(
                    {
                        "identifier": ident,
                        "eos": True,
                        "eos_reason": reason,
                        "prompt_tokens": 2,
                        "new_tokens": min(3, job.fields["max_new_tokens"]),
                    }
                )
        return events


def fake_engine(generator: FakeGenerator) -> Engine:
    engine = Engine.__new__(Engine)
    settings_class = type("Settings", (), {})
    engine._sampler = SimpleNamespace(Settings=settings_class)
    engine._job_class = FakeJob
    engine.tokenizer = SimpleNamespace(
        eos_token_id=2, encode=lambda text, add_bos: SimpleNamespace(shape=(1, len(text.split())))
    )
    engine.model = SimpleNamespace(unload=lambda: None)
    engine.generator = generator
    engine.paged = False
    engine.capacity = 2
    engine.context_length = 4096
    engine.model_name = "fake-exl2"
    engine._commands = queue.SimpleQueue()
    engine._callbacks = {}
    engine._jobs = {}
    engine._next_id = 0
    engine._id_lock = threading.Lock()
    engine._stopped = False
    engine.failure = None
    engine._enforcer_data = None
    engine._thread = threading.Thread(target=engine._drive, daemon=True)
    engine._thread.start()
    return engine


@pytest.fixture
def generator() -> FakeGenerator:
    return FakeGenerator()


def meta() -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + 5)


async def test_events_from_the_engine_thread_stream_through_the_pool(
    generator: FakeGenerator,
) -> None:
    engine = fake_engine(generator)
    pool = InferencePool([TierSpec(name="gpu", workers=[ExLlamaV2Backend(engine)])])
    chunks: list[str] = []
    try:
        result = await pool.submit(
            GenerateRequest(prompt="hi", seed=3), meta(), on_chunk=lambda c: chunks.append(c.text)
        )
        short = await pool.submit(GenerateRequest(prompt="hi", max_tokens=1), meta())
    finally:
        await pool.aclose()
    assert chunks == ["Hello", " there", " friend"]
    assert (result.text, result.finish_reason, result.backend) == (
        "Hello there friend",
        FinishReason.STOP,
        "exllamav2",
    )
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 3)
    assert short.finish_reason == FinishReason.LENGTH


class FakeSchemaFilter:
    built: ClassVar[list[dict[str, Any]]] = []

    @staticmethod
    def tokenizer_data(tokenizer: Any) -> str:
        return f"vocabulary of {tokenizer.eos_token_id}"

    def __init__(self, model: Any, tokenizer: Any, data: Any, schema: dict[str, Any]) -> None:
        assert data == "vocabulary of 2"
        FakeSchemaFilter.built.append(schema)


async def test_an_output_schema_becomes_a_token_filter_on_the_job(
    generator: FakeGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inference._exllamav2 as module  # noqa: PLC0415

    monkeypatch.setattr(module, "_schema_filter_class", lambda: FakeSchemaFilter)
    engine = fake_engine(generator)
    backend = ExLlamaV2Backend(engine)
    schema = output_schema(list[int])
    try:
        await backend.generate(
            GenerateRequest(prompt="hi", output=schema), lambda _t: None, meta=meta()
        )
        await backend.generate(GenerateRequest(prompt="hi"), lambda _t: None, meta=meta())
    finally:
        await backend.aclose()
    constrained, free = [job.fields for job in generator.finished]
    assert isinstance(constrained["filters"][0], FakeSchemaFilter)
    assert constrained["filter_prefer_eos"] is True
    assert FakeSchemaFilter.built == [{"type": "array", "items": {"type": "integer"}}]
    assert "filters" not in free


def test_without_the_gpu_extra_a_schema_is_a_config_error_not_a_crash() -> None:
    import inference._exllamav2 as module  # noqa: PLC0415

    if importlib.util.find_spec("exllamav2") is not None:
        pytest.skip("the gpu extra is installed here")
    module._schema_filter_class.cache_clear()
    with pytest.raises(ConfigError, match="needs the 'gpu' extra"):
        module._schema_filter_class()


async def test_a_cancelled_generation_cancels_the_engine_job(generator: FakeGenerator) -> None:
    engine = fake_engine(generator)
    backend = ExLlamaV2Backend(engine)
    generator.iterate = list  # type: ignore[method-assign] - a job that never ends
    task = asyncio.ensure_future(
        backend.generate(GenerateRequest(prompt="hi"), lambda _t: None, meta=meta())
    )
    assert await asyncio.to_thread(generator.enqueued.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(generator.cancel_called.wait, 5)
    assert len(generator.cancelled) == 1
    await backend.aclose()


async def test_an_engine_that_fails_refuses_later_jobs_and_trips_the_breaker(
    generator: FakeGenerator,
) -> None:
    engine = fake_engine(generator)
    pool = InferencePool(
        [TierSpec(name="gpu", workers=[ExLlamaV2Backend(engine)], breaker_threshold=1)]
    )
    generator.cancel_fails = True
    generator.iterate = list  # type: ignore[method-assign] - a job that never ends
    stalled = asyncio.ensure_future(pool.submit(GenerateRequest(prompt="hi", max_tokens=3), meta()))
    assert await asyncio.to_thread(generator.enqueued.wait, 5)
    stalled.cancel()  # the cancel raises on the engine thread: the engine fails
    with pytest.raises(asyncio.CancelledError):
        await stalled
    await asyncio.to_thread(engine._thread.join, 2)
    assert isinstance(engine.failure, RuntimeError)
    with pytest.raises(GeneratorFailed):
        engine.submit(GenerateRequest(prompt="hi"), lambda _e: None)
    with pytest.raises(Unavailable, match="worker failed"):
        await pool.submit(GenerateRequest(prompt="hi"), meta())
    assert pool.statistics().tiers[0].failures == 1
    await pool.aclose()
