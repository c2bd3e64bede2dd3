"""The openai backend against llama-cpp-python's own OpenAI-compatible server.

The server runs in a subprocess on the small random Llama built here, in its
default configuration (it interrupts a stream when another request arrives),
with an API key. What this server does differently from OpenAI's API is
pinned down here: it sends no `usage` in a stream, takes a schema only as
`{"type": "json_object", "schema": ...}`, answers 500 to a body it cannot
validate, and breaks the stream (after a 200) when the prompt exceeds its
context.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import msgspec
import pytest

from bridges import free_port
from inference import Generation
from inference._openai import OpenAIBackend, UpstreamError
from messages import (
    BadRequest,
    ChatMessage,
    FinishReason,
    Forbidden,
    GenerateRequest,
    Metadata,
    NotFound,
    Sampling,
    decode_output,
    new_message_id,
    output_schema,
)

pytestmark = pytest.mark.model

MODEL: Final = "tiny-random"
API_KEY: Final = "test-key"
CONTEXT: Final = 2048
READY_S: Final = 60.0
WAIT: Final = 10.0
LONG: Final = 1500  # tokens: seconds of work, so a generation is still running when cut
DISCONNECTED: Final = "Disconnected from client"  # what the server logs when a stream is cut

# Runs the server's own entry point after turning llama.cpp's extra buffer types
# off for every model it loads, as inference/_llamacpp.py does: the AMX kernels
# they bring crash (SIGSEGV) on CPUs that report AMX inside a VM, and the
# server has no option for it.
LAUNCHER: Final = """\
import llama_cpp.llama_cpp as bindings
from llama_cpp.server.__main__ import main

original = bindings.llama_model_default_params


def defaults():
    params = original()
    params.use_extra_bufts = False
    return params


bindings.llama_model_default_params = defaults
main()
"""


class Mood(enum.Enum):
    CALM = "calm"
    ANGRY = "angry"


class Triage(msgspec.Struct, frozen=True):
    mood: Mood
    urgent: bool
    note: Annotated[str, msgspec.Meta(max_length=40)]


@dataclass(frozen=True, slots=True)
class LlamaServer:
    url: str
    log: Path

    def logged(self, text: str) -> int:
        """How many times the server has logged `text` so far."""
        return self.log.read_text(errors="replace").count(text)

    async def wait_for(self, text: str, count: int) -> None:
        """Wait until the server has logged `text` `count` times, with a bound."""
        deadline = time.monotonic() + WAIT
        while self.logged(text) < count:
            assert time.monotonic() < deadline, f"the server did not log {text!r} in {WAIT} s"
            await asyncio.sleep(0.05)


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _wait_until_ready(proc: subprocess.Popen[bytes], server: LlamaServer) -> None:
    """Poll `GET /v1/models` until it lists the model; fail if the server dies or is slow."""
    deadline = time.monotonic() + READY_S
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{_log_tail(server.log)}")
        try:
            response = httpx.get(f"{server.url}/models", headers=headers, timeout=1.0)
        except httpx.TransportError:
            pass
        else:
            if response.status_code == httpx.codes.OK:
                assert [m["id"] for m in response.json()["data"]] == [MODEL]
                return
        time.sleep(0.1)
    pytest.fail(f"the server did not answer within {READY_S} s:\n{_log_tail(server.log)}")


@pytest.fixture(scope="module")
def llama_server(
    small_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    port = free_port()
    server = LlamaServer(
        url=f"http://127.0.0.1:{port}/v1",
        log=tmp_path_factory.mktemp("llama-server") / "server.log",
    )
    args = [
        *("--model", str(small_gguf), "--model_alias", MODEL),
        *("--host", "127.0.0.1", "--port", str(port), "--api_key", API_KEY),
        *("--n_ctx", str(CONTEXT), "--n_threads", "1", "--n_threads_batch", "1"),
    ]
    with server.log.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # its log lines land as they happen
        )
        try:
            _wait_until_ready(proc, server)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(WAIT)


def open_backend(
    url: str,
    *,
    api_key: str | None = API_KEY,
    response_format: str = "json_object",
    request_id_header: str = "",
) -> OpenAIBackend:
    """The backend as configured for this server: `json_object` schemas, no X-Request-Id."""
    return OpenAIBackend(
        url,
        MODEL,
        api_key=api_key,
        capacity=2,
        context_length=CONTEXT,
        response_format=response_format,
        request_id_header=request_id_header,
    )


@pytest.fixture
async def backend(llama_server: LlamaServer) -> AsyncIterator[OpenAIBackend]:
    opened = open_backend(llama_server.url)
    yield opened
    await opened.aclose()


def meta() -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + 30)


def chat(content: str, max_tokens: int, **fields: Any) -> GenerateRequest:
    return GenerateRequest(
        messages=[ChatMessage(role="user", content=content)], max_tokens=max_tokens, **fields
    )


async def generate(backend: OpenAIBackend, request: GenerateRequest) -> Generation:
    return await asyncio.wait_for(backend.generate(request, lambda _t: None, meta=meta()), WAIT)


async def test_the_server_sends_no_usage_in_a_stream_even_when_asked(
    llama_server: LlamaServer, backend: OpenAIBackend
) -> None:
    body = backend.body(chat("Where is my parcel?", 6))
    assert body["stream_options"] == {"include_usage": True}
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": str(uuid.uuid4())}
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        client.stream(
            "POST", f"{llama_server.url}/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == httpx.codes.OK
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    events: list[dict[str, Any]] = [json.loads(line.removeprefix("data:")) for line in lines[:-1]]
    assert [e for e in events if "usage" in e] == []
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "length"
    assert sum(1 for e in events if e["choices"][0]["delta"].get("content")) == 6


async def test_a_generation_cut_by_max_tokens_ends_with_length_and_the_backends_own_counts(
    backend: OpenAIBackend,
) -> None:
    pieces: list[str] = []
    request = chat("Where is my parcel?", 12)
    result = await asyncio.wait_for(backend.generate(request, pieces.append, meta=meta()), WAIT)
    assert result.text.strip()
    assert result.finish_reason is FinishReason.LENGTH
    # No usage comes in this server's streams (the test above), so the counts
    # are the backend's fallbacks: a piece a token, and its prompt estimate.
    assert result.completion_tokens == len(pieces)
    assert 1 <= result.completion_tokens <= request.max_tokens
    assert result.prompt_tokens == backend.count_tokens(request)
    assert 0 < result.first_token_s < WAIT


async def test_pieces_are_emitted_as_they_stream_and_join_to_the_text(
    backend: OpenAIBackend,
) -> None:
    pieces: list[str] = []
    request = chat("tell me a story", 24)
    result = await asyncio.wait_for(backend.generate(request, pieces.append, meta=meta()), WAIT)
    assert len(pieces) > 1
    assert all(pieces)
    assert "".join(pieces) == result.text


async def test_cancelling_a_generation_cuts_its_stream_and_the_server_serves_the_next(
    llama_server: LlamaServer, backend: OpenAIBackend
) -> None:
    cut_before = llama_server.logged(DISCONNECTED)
    first = asyncio.Event()
    long = chat("tell me everything", LONG)
    task = asyncio.create_task(backend.generate(long, lambda _t: first.set(), meta=meta()))
    try:
        await asyncio.wait_for(first.wait(), WAIT)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=WAIT)
        assert task in done
        assert task.cancelled()
    finally:
        task.cancel()
    # The server noticed the closed connection (before any other request
    # could have interrupted the stream), and is free for the next one.
    await llama_server.wait_for(DISCONNECTED, cut_before + 1)
    result = await generate(backend, chat("and now?", 4))
    assert result.finish_reason is FinishReason.LENGTH
    assert result.text


async def test_a_prompt_over_the_context_breaks_the_stream_and_is_an_upstream_error(
    llama_server: LlamaServer, backend: OpenAIBackend
) -> None:
    # The server's own 400 (context_length_exceeded) is only for unstreamed
    # requests: a stream has already answered 200 when the engine refuses.
    refused = "exceed context window of 2048"
    refused_before = llama_server.logged(refused)
    with pytest.raises(UpstreamError, match="ended the stream before the generation finished"):
        await generate(backend, chat("hello " * 3000, 8))
    await llama_server.wait_for(refused, refused_before + 1)  # the engine's refusal, logged
    assert (await generate(backend, chat("hi", 2))).finish_reason is FinishReason.LENGTH


async def test_a_wrong_api_key_is_forbidden(llama_server: LlamaServer) -> None:
    for key in ("not-the-key", None):
        stranger = open_backend(llama_server.url, api_key=key)
        try:
            with pytest.raises(Forbidden, match="401"):
                await generate(stranger, chat("hi", 2))
        finally:
            await stranger.aclose()


async def test_a_url_without_the_v1_prefix_is_not_found(llama_server: LlamaServer) -> None:
    lost = open_backend(llama_server.url.removesuffix("/v1"))
    try:
        with pytest.raises(NotFound, match="no such model or route"):
            await generate(lost, chat("hi", 2))
    finally:
        await lost.aclose()


async def test_an_unknown_model_name_is_served_by_the_one_model_not_refused(
    llama_server: LlamaServer,
) -> None:
    other = OpenAIBackend(llama_server.url, "no-such-model", api_key=API_KEY, request_id_header="")
    try:
        result = await generate(other, chat("hi", 3))
    finally:
        await other.aclose()
    assert result.finish_reason is FinishReason.LENGTH
    assert result.text


async def test_a_server_that_is_not_there_is_an_upstream_error() -> None:
    absent = open_backend(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(UpstreamError, match="ConnectError"):
            await generate(absent, chat("anyone?", 2))
    finally:
        await absent.aclose()


async def test_a_json_object_schema_keeps_random_weights_to_a_valid_value(
    backend: OpenAIBackend,
) -> None:
    request = chat("Customer: hi", 400, output=output_schema(Triage))
    assert backend.body(request)["response_format"]["type"] == "json_object"
    result = await generate(backend, request)
    assert result.finish_reason is FinishReason.STOP
    value = decode_output(result.text, Triage)  # raises OutputInvalid if it is not one
    assert isinstance(value.mood, Mood)
    assert len(value.note) <= 40
    free = await generate(backend, chat("Customer: hi", 64))
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.text)  # the same model, unconstrained: noise


async def test_the_openai_json_schema_form_is_answered_500_so_it_is_an_upstream_error(
    llama_server: LlamaServer,
) -> None:
    # The server validates `response_format.type` as "text" or "json_object"
    # and reports the failed validation as an internal error, not as a 4xx.
    openai_form = open_backend(llama_server.url, response_format="json_schema")
    request = chat("Customer: hi", 400, output=output_schema(Triage))
    assert openai_form.body(request)["response_format"]["type"] == "json_schema"
    try:
        with pytest.raises(UpstreamError, match=r"answered 500: .*'text' or 'json_object'"):
            await generate(openai_form, request)
    finally:
        await openai_form.aclose()


async def test_this_server_refuses_a_message_id_in_x_request_id_unless_it_is_left_out(
    llama_server: LlamaServer,
) -> None:
    # Its request-id middleware (starlette-context) wants a UUID there.
    with_header = open_backend(llama_server.url, request_id_header="X-Request-Id")
    try:
        with pytest.raises(BadRequest):
            await generate(with_header, chat("hi", 2))
    finally:
        await with_header.aclose()


async def test_a_generation_the_server_interrupts_is_not_reported_as_finished(
    backend: OpenAIBackend,
) -> None:
    first = asyncio.Event()
    long = asyncio.create_task(
        backend.generate(chat("tell me everything", LONG), lambda _t: first.set(), meta=meta())
    )
    try:
        await asyncio.wait_for(first.wait(), WAIT)
        short = await generate(backend, chat("me first", 4))  # interrupts the long one
        [outcome] = await asyncio.wait_for(asyncio.gather(long, return_exceptions=True), WAIT)
    finally:
        long.cancel()
    if short.finish_reason is not FinishReason.LENGTH or (
        isinstance(outcome, Generation) and outcome.finish_reason is FinishReason.LENGTH
    ):
        pytest.fail(f"the long generation was not interrupted: {outcome!r}")
    assert isinstance(outcome, UpstreamError), f"an interrupted generation finished: {outcome!r}"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the backend leaves top_k=0 out and sends repetition_penalty, which this server"
    " ignores (it takes repeat_penalty); its own top_k=40 and repeat_penalty=1.1 apply",
)
@pytest.mark.parametrize(
    ("asked", "server_default"),
    [
        (Sampling(temperature=1.5, top_k=0), Sampling(temperature=1.5, top_k=40)),
        (Sampling(temperature=1.5, repetition_penalty=3.0), Sampling(temperature=1.5)),
    ],
    ids=["top_k=0 keeps every token", "repetition_penalty reaches the server"],
)
async def test_sampling_settings_reach_the_server(
    backend: OpenAIBackend, asked: Sampling, server_default: Sampling
) -> None:
    texts = [
        (await generate(backend, chat("hi", 40, sampling=sampling, seed=11))).text
        for sampling in (server_default, server_default, asked)
    ]
    if texts[0] != texts[1]:
        pytest.fail(f"the same seed sampled different texts: {texts[:2]}")
    assert texts[2] != texts[0], f"{asked} sampled what the server's defaults sample"
