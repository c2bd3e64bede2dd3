"""The llamacpp backend on a real engine: a random Llama built here, quantized, on the CPU."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from actors.support._messages import SupportAnswer, SupportDecision
from inference import InferencePool, TierSpec, check_available
from inference._llamacpp import LlamaCppBackend, schema_to_gbnf
from messages import (
    BadRequest,
    ChatMessage,
    ConfigError,
    FinishReason,
    GenerateRequest,
    Metadata,
    OutputSchema,
    Sampling,
    Unavailable,
    decode_output,
    new_message_id,
    output_schema,
)
from tests.conftest import WAIT

pytestmark = pytest.mark.model

CONTEXT = 2048


def meta(timeout: float = 30.0) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout)


@pytest.fixture(scope="module")
def engine(small_gguf: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(str(small_gguf), n_ctx=CONTEXT, n_threads=2, seed=7)
    yield backend
    asyncio.run(backend.aclose())


async def generate(engine: LlamaCppBackend, request: GenerateRequest) -> tuple[str, list[str]]:
    pieces: list[str] = []
    result = await engine.generate(request, pieces.append, meta=meta())
    return result.text, pieces


async def test_a_generation_streams_piece_by_piece_and_counts_real_tokens(
    engine: LlamaCppBackend,
) -> None:
    pieces: list[str] = []
    request = GenerateRequest(prompt="Where is my parcel?", max_tokens=24)
    result = await engine.generate(request, pieces.append, meta=meta())
    assert len(pieces) > 1
    assert "".join(pieces) == result.text
    assert result.finish_reason is FinishReason.LENGTH
    assert result.completion_tokens == 24
    assert result.prompt_tokens == engine.count_tokens(request)
    assert result.prompt_tokens == len(engine.llm.tokenize(b"Where is my parcel?", add_bos=True))
    assert 0 < result.first_token_s < WAIT


async def test_the_same_seed_samples_the_same_text_and_another_seed_differs(
    engine: LlamaCppBackend,
) -> None:
    hot = Sampling(temperature=1.5, top_k=0, top_p=1.0)
    texts = [
        (await generate(engine, GenerateRequest(prompt="hi", max_tokens=32, sampling=hot, seed=s)))[
            0
        ]
        for s in (11, 11, 12)
    ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


async def test_a_stop_string_ends_the_text_before_it(engine: LlamaCppBackend) -> None:
    free, _ = await generate(engine, GenerateRequest(prompt="hello", max_tokens=48))
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert stop.strip()
    cut = await engine.generate(
        GenerateRequest(prompt="hello", max_tokens=48, stop=[stop]), lambda _t: None, meta=meta()
    )
    assert cut.finish_reason is FinishReason.STOP
    assert cut.text == free[: free.index(stop)]


async def test_chat_turns_are_rendered_with_the_models_own_template(
    engine: LlamaCppBackend,
) -> None:
    request = GenerateRequest(
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="hi"),
        ],
        max_tokens=4,
    )
    tokens, stops = engine.prompt(request)
    rendered = engine.llm.detokenize(tokens).decode()
    assert rendered.endswith("<|system|>Be brief.\n<|user|>hi\n<|assistant|>")
    assert stops == ["</s>"]
    result = await engine.generate(request, lambda _t: None, meta=meta())
    assert result.prompt_tokens == len(tokens)


@pytest.mark.parametrize("output", [SupportDecision, SupportAnswer], ids=lambda t: t.__name__)
async def test_random_weights_under_a_grammar_write_valid_json_of_the_type(
    engine: LlamaCppBackend, output: type[msgspec.Struct]
) -> None:
    request = GenerateRequest(prompt="Customer: hi", max_tokens=1800, output=output_schema(output))
    text, _ = await generate(engine, request)
    value = decode_output(text, output)  # raises OutputInvalid if it is not one
    assert isinstance(value, output)
    free, _ = await generate(engine, GenerateRequest(prompt="Customer: hi", max_tokens=64))
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)  # the same model, unconstrained: noise


def test_the_grammar_keeps_control_characters_out_of_strings_and_bounds_them_compactly() -> None:
    gbnf = schema_to_gbnf(output_schema(SupportAnswer).json)
    assert r'[^"\\\x7F\x00-\x1F]' in gbnf
    assert "char{1,2000}" in gbnf  # not 2000 nested groups, which llama.cpp refuses


async def test_cancelling_stops_the_engine_at_the_next_token_and_frees_it(
    engine: LlamaCppBackend,
) -> None:
    first = asyncio.Event()
    long = GenerateRequest(prompt="tell me everything", max_tokens=1500)
    task = asyncio.create_task(engine.generate(long, lambda _t: first.set(), meta=meta()))
    await asyncio.wait_for(first.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.monotonic()
    after = await engine.generate(
        GenerateRequest(prompt="hi", max_tokens=2), lambda _t: None, meta=meta()
    )
    assert after.completion_tokens == 2
    # Had the first run gone on, 1500 tokens would stand before this one.
    assert time.monotonic() - started < WAIT


async def test_a_prompt_over_the_context_is_a_bad_request_from_the_pool(
    engine: LlamaCppBackend,
) -> None:
    pool = InferencePool([TierSpec(name="cpu", workers=[engine])])
    try:
        request = GenerateRequest(prompt="refund " * CONTEXT, max_tokens=8)
        with pytest.raises(BadRequest, match=r"context of 2048"):
            await pool.submit(request, meta())
        result = await pool.submit(GenerateRequest(prompt="refund", max_tokens=3), meta())
        assert (result.backend, result.usage.completion_tokens) == ("llamacpp", 3)
    finally:
        await pool.join()


async def test_a_schema_the_grammar_cannot_express_is_a_bad_request(
    engine: LlamaCppBackend,
) -> None:
    unsupported = OutputSchema(name="Remote", json='{"$ref": "https://example.com/s.json"}')
    with pytest.raises(BadRequest, match=r"cannot be expressed as a llama\.cpp grammar"):
        await engine.generate(
            GenerateRequest(prompt="x", output=unsupported), lambda _t: None, meta=meta()
        )
    result = await engine.generate(
        GenerateRequest(prompt="x", max_tokens=2), lambda _t: None, meta=meta()
    )
    assert result.completion_tokens == 2  # and the engine still serves


def test_a_truncated_gguf_file_is_refused_before_a_worker_starts(
    small_gguf: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.gguf"
    with small_gguf.open("rb") as whole, cut.open("wb") as part:
        shutil.copyfileobj(whole, part)
        part.truncate(small_gguf.stat().st_size // 2)
    from config import LlamaCppBackendSettings  # noqa: PLC0415

    with pytest.raises(ConfigError, match=r"cut short|damaged") as caught:
        check_available(
            LlamaCppBackendSettings(model_path=str(cut)), key="inference.tiers[0].backend"
        )
    assert caught.value.path == "inference.tiers[0].backend.model_path"
    check_available(LlamaCppBackendSettings(model_path=str(small_gguf)))  # the whole file passes


def test_a_grammar_llama_cpp_cannot_parse_is_refused_before_it_reaches_the_engine(
    engine: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inference._llamacpp as module  # noqa: PLC0415

    monkeypatch.setattr(module, "schema_to_gbnf", lambda _json: 'root ::= "a" | [')
    engine.grammar.cache_clear()
    try:
        with pytest.raises(BadRequest, match=r"grammar llama\.cpp cannot parse"):
            engine.grammar(OutputSchema(name="Unparsable", json='{"type": "string"}'))
    finally:
        engine.grammar.cache_clear()


async def test_a_closed_backend_refuses_work_and_stops_its_generation(small_gguf: Path) -> None:
    backend = LlamaCppBackend(str(small_gguf), n_ctx=CONTEXT, n_threads=1)
    first = asyncio.Event()
    long = GenerateRequest(prompt="tell me everything", max_tokens=1900)
    running = asyncio.create_task(backend.generate(long, lambda _t: first.set(), meta=meta()))
    await asyncio.wait_for(first.wait(), WAIT)
    await asyncio.wait_for(backend.aclose(), WAIT)  # not the 1900 tokens' time
    result = await asyncio.wait_for(running, WAIT)
    assert result.completion_tokens < long.max_tokens
    with pytest.raises(Unavailable, match="is closed"):
        await backend.generate(GenerateRequest(prompt="hi"), lambda _t: None, meta=meta())
    with pytest.raises(Unavailable, match="is closed"):
        backend.count_tokens(GenerateRequest(prompt="hi"))


async def test_a_schema_nested_too_deeply_is_a_bad_request_for_the_engine(
    engine: LlamaCppBackend,
) -> None:
    deep = OutputSchema(name="Deep", json='{"items":' * 6000 + "{}" + "}" * 6000)
    with pytest.raises(BadRequest, match="nested too deeply"):
        await engine.generate(
            GenerateRequest(prompt="x", output=deep), lambda _t: None, meta=meta()
        )
