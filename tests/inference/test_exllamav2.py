"""The exllamav2 backend, as far as a machine without a GPU can check it."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from typing import Any

import pytest

from bridges import build_node
from config import decode
from inference import pool_from_settings
from inference._exllamav2 import ExLlamaV2Backend, GeneratorFailed, render_prompt
from messages import (
    BadRequest,
    ChatMessage,
    ConfigError,
    FinishReason,
    GenerateRequest,
    StartFailed,
)
from tests.inference.test_exllamav2_engine import FakeGenerator, FakeJob, fake_engine, meta

NO_GPU_EXTRA = importlib.util.find_spec("exllamav2") is None
EXL2_TIER = {
    "name": "large",
    "process": False,
    "backend": {"kind": "exllamav2", "model_dir": "/models/llama-exl2", "cache_mode": "Q4"},
}
EXL2_PROCESS_TIER = {k: v for k, v in EXL2_TIER.items() if k != "process"}


def test_chat_turns_are_rendered_and_end_with_the_assistant_turn() -> None:
    request = GenerateRequest(
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Where is my order?"),
        ]
    )
    assert render_prompt(request) == "system: Be brief.\nuser: Where is my order?\nassistant:"
    assert render_prompt(GenerateRequest(prompt="raw text")) == "raw text"
    with pytest.raises(BadRequest):
        render_prompt(GenerateRequest(prompt=" "))


def test_choosing_exllamav2_without_a_gpu_or_a_model_fails_with_a_clear_message() -> None:
    # Without the gpu extra or a GPU it says which; on a GPU, that there is no such model.
    settings = decode({"inference": {"tiers": [EXL2_TIER]}})
    with pytest.raises(ConfigError, match=r"gpu.*extra|CUDA GPU|model_dir.*cannot load"):
        pool_from_settings(settings.inference)


def test_a_node_configured_for_exllamav2_without_a_gpu_does_not_start() -> None:
    node = build_node(decode({"nats": {"enabled": False}, "inference": {"tiers": [EXL2_TIER]}}))
    with pytest.raises(StartFailed, match="inference"):
        node.start()
    node.runtime.close()


def test_exllamav2_workers_run_as_processes_unless_told_otherwise() -> None:
    in_node = {**EXL2_TIER, "name": "small"}
    settings = decode({"inference": {"tiers": [EXL2_PROCESS_TIER, in_node]}})
    assert [t.runs_processes for t in settings.inference.tiers] == [True, False]


@pytest.mark.skipif(not NO_GPU_EXTRA, reason="the gpu extra is installed here")
def test_a_node_with_exllamav2_worker_processes_but_no_gpu_extra_fails_before_starting() -> None:
    with pytest.raises(ConfigError, match=r"gpu.*extra.*not installed"):
        build_node(decode({"inference": {"tiers": [EXL2_PROCESS_TIER]}}))


def test_an_unknown_cache_mode_is_a_config_error_naming_the_key() -> None:
    bad = {**EXL2_TIER, "backend": {**EXL2_TIER["backend"], "cache_mode": "Q3"}}
    with pytest.raises(ConfigError, match=r"inference\.tiers\[0\]\.backend\.cache_mode"):
        decode({"inference": {"tiers": [bad]}})


class HoldingGenerator(FakeGenerator):
    """Ends every job the way exllamav2 ends one at a stop token, or at a stop string.

    At a stop token exllamav2's end event has no `text`: what it still held
    back (here a character that needs two tokens, then the stop token's own
    piece, "</s>") is in `held`. At a stop string the text before the string
    comes as `text`, and `held` keeps the string.
    """

    def __init__(self, eos_reason: str) -> None:
        super().__init__()
        self.eos_reason = eos_reason

    def iterate(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for job in list(self.jobs):
            self.jobs.remove(job)
            ident = job.fields["identifier"]
            events.append({"identifier": ident, "eos": False, "text": "Bonjour, caf"})
            end: dict[str, Any] = {"identifier": ident, "eos": True, "new_tokens": 4}
            if self.eos_reason == "stop_token":
                end |= {"eos_triggering_token_id": 2, "held": {"text": "\u00e9</s>"}}
            else:
                end |= {"text": "\u00e9", "held": {"text": "STOP and more"}}
            events.append({**end, "eos_reason": self.eos_reason})
        return events


def _piece_list(include_special_tokens: bool) -> list[str]:
    assert not include_special_tokens, "exllamav2 appends the piece without special tokens"
    return ["<s>", "x", "</s>"]


@pytest.mark.parametrize("eos_reason", ["stop_token", "stop_string"])
async def test_text_held_back_at_the_end_of_a_generation_is_not_lost(eos_reason: str) -> None:
    engine = fake_engine(HoldingGenerator(eos_reason))
    engine.tokenizer.get_id_to_piece_list = _piece_list
    chunks: list[str] = []
    backend = ExLlamaV2Backend(engine)
    try:
        result = await backend.generate(
            GenerateRequest(prompt="hi", stop=["STOP"]), chunks.append, meta=meta()
        )
    finally:
        await backend.aclose()
    assert result.text == "Bonjour, caf\u00e9"
    assert "".join(chunks) == result.text
    assert result.finish_reason == FinishReason.STOP


async def test_exclusive_work_runs_on_the_engine_thread_between_its_steps() -> None:
    generator = FakeGenerator()
    engine = fake_engine(generator)
    backend = ExLlamaV2Backend(engine)
    threads: set[int] = set()

    def work(driven: FakeGenerator) -> int:
        threads.add(threading.get_ident())
        driven.enqueue(FakeJob(identifier="raw", max_new_tokens=3))
        events = 0
        while driven.num_remaining_jobs():
            events += len(driven.iterate())
        return events

    try:
        served = await backend.generate(GenerateRequest(prompt="hi"), lambda _t: None, meta=meta())
        assert await asyncio.to_thread(engine.run_exclusive, work, timeout=5) == 4
    finally:
        await backend.aclose()
    assert served.text == "Hello there friend"
    assert threads == {engine._thread.ident}
    with pytest.raises(GeneratorFailed):
        engine.run_exclusive(work, timeout=1)


async def test_exclusive_work_is_refused_while_the_engine_has_jobs_of_its_own() -> None:
    generator = FakeGenerator()
    engine = fake_engine(generator)
    generator.iterate = list  # type: ignore[method-assign] - a job that never ends
    backend = ExLlamaV2Backend(engine)
    running = asyncio.ensure_future(
        backend.generate(GenerateRequest(prompt="hi"), lambda _t: None, meta=meta())
    )
    try:
        assert await asyncio.to_thread(generator.enqueued.wait, 5)
        with pytest.raises(RuntimeError, match=r"runs 1 job\(s\) of its own"):
            await asyncio.to_thread(engine.run_exclusive, len, timeout=5)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await backend.aclose()
