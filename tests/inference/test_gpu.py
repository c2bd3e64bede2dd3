"""The exllamav2 backend on a real GPU: `python -m pytest -m gpu`.

Skipped unless torch sees a CUDA device and exllamav2 is installed (the
`gpu` extra). The model is `AF_EXL2_MODEL_DIR`, or a tiny random Llama that
`bench/make_test_model.py` builds and converts into a temporary directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import InferencePool, TierSpec
from messages import FinishReason, GenerateRequest, Metadata, Sampling, TokenChunk, new_message_id

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
# A worker process loads torch and the model before it says it is ready.
MODEL_LOAD = 120.0


def _gpu_ready() -> str | None:
    """Why the suite cannot run here, or None if it can."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("exllamav2") is None:
        return "the 'gpu' extra (torch, exllamav2) is not installed"
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _gpu_ready()
    if reason is not None:
        pytest.skip(reason)
    given = os.environ.get("AF_EXL2_MODEL_DIR")
    if given:
        return Path(given)
    sys.path.insert(0, str(ROOT / "bench"))
    import make_test_model  # noqa: PLC0415

    out = tmp_path_factory.mktemp("exl2-model")
    make_test_model.build_tokenizer(out)
    make_test_model.build_model(out)
    make_test_model.convert(out, out / "work", out / "exl2", bits=4.0)
    return out / "exl2"


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[object]:
    from inference._exllamav2 import Engine  # noqa: PLC0415

    e = Engine(str(model_dir), cache_mode="Q4", max_seq_len=2048)
    yield e
    e.close()


def _pool(engine: object) -> InferencePool:
    from inference._exllamav2 import Engine, ExLlamaV2Backend  # noqa: PLC0415

    assert isinstance(engine, Engine)
    return InferencePool([TierSpec(name="gpu", workers=[ExLlamaV2Backend(engine)])])


def _meta(timeout: float = 60.0) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout)


async def test_a_generation_streams_through_the_pool(engine: object) -> None:
    chunks: list[TokenChunk] = []
    result = await _pool(engine).submit(
        GenerateRequest(prompt="order refund", max_tokens=32), _meta(), on_chunk=chunks.append
    )
    assert result.backend == "exllamav2"
    assert "".join(c.text for c in chunks) == result.text
    assert result.usage.completion_tokens > 0
    assert result.usage.prompt_tokens > 0
    assert result.finish_reason in {FinishReason.STOP, FinishReason.LENGTH}


async def test_a_token_filter_keeps_random_weights_to_the_schema(engine: object) -> None:
    from actors.support._messages import SupportDecision  # noqa: PLC0415
    from messages import decode_output, output_schema  # noqa: PLC0415

    request = GenerateRequest(
        prompt="Customer: refund", max_tokens=1024, output=output_schema(SupportDecision)
    )
    result = await _pool(engine).submit(request, _meta(timeout=120.0))
    assert isinstance(decode_output(result.text, SupportDecision), SupportDecision)


async def test_greedy_decoding_gives_the_same_text_twice(engine: object) -> None:
    # exllamav2 does not promise that a seed repeats sampled text (its matrix
    # kernels add with atomics): two runs are compared greedily.
    pool = _pool(engine)
    request = GenerateRequest(
        prompt="ticket shipping", max_tokens=24, sampling=Sampling(temperature=0.0)
    )
    first = await pool.submit(request, _meta())
    second = await pool.submit(request, _meta())
    assert first.text == second.text


async def test_cancelling_a_generation_frees_its_slot(engine: object) -> None:
    pool = _pool(engine)
    started = asyncio.Event()
    task = asyncio.ensure_future(
        pool.submit(
            GenerateRequest(prompt="invoice", max_tokens=1024),
            _meta(),
            on_chunk=lambda _c: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(pool.join(), 30)
    after = await pool.submit(GenerateRequest(prompt="price", max_tokens=8), _meta())
    assert after.usage.completion_tokens > 0


def test_a_killed_gpu_worker_process_is_restarted_and_serves_again(model_dir: Path) -> None:
    import signal  # noqa: PLC0415

    from bridges import NatsServer, build_node  # noqa: PLC0415
    from config import decode  # noqa: PLC0415
    from messages import ChildRestarted  # noqa: PLC0415
    from tests.bridges.test_worker_processes import (  # noqa: PLC0415
        ReadyWorkers,
        worker_child,
    )
    from tests.conftest import EventRecorder  # noqa: PLC0415

    server = NatsServer().start()
    tier = {
        "name": "large",
        "gpus": [0],
        "workers": 1,
        "backend": {"kind": "exllamav2", "model_dir": str(model_dir), "cache_mode": "Q4"},
    }
    node = build_node(
        decode({"nats": {"url": server.url, "embed": False}, "inference": {"tiers": [tier]}})
    )
    recorder = EventRecorder()
    node.runtime.events.subscribe(recorder)
    ready = ReadyWorkers(server.url)
    node.start()
    try:
        client = node.runtime.inference
        assert client is not None
        [up] = ready.wait(1, timeout=MODEL_LOAD)
        assert up.backend == "exllamav2"
        before = client.generate(GenerateRequest(prompt="refund", max_tokens=8), _meta())
        assert before.backend == "exllamav2"
        os.kill(worker_child(node).pid or 0, signal.SIGKILL)
        recorder.wait_for(lambda e: isinstance(e, ChildRestarted), timeout=MODEL_LOAD)
        ready.wait(2, timeout=MODEL_LOAD)
        after = client.generate(GenerateRequest(prompt="refund", max_tokens=8), _meta())
        assert after.backend == "exllamav2"
        assert after.usage.completion_tokens > 0
    finally:
        node.stop()
        node.run(handle_signals=False)
        ready.close()
        server.stop()
