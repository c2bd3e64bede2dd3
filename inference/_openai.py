"""The openai backend: any OpenAI-compatible server (vLLM, TabbyAPI, llama.cpp), streamed.

It speaks `POST {url}/chat/completions` with `"stream": true` and reads the
Server-Sent Events as they arrive, on the node's I/O loop through one
shared `httpx.AsyncClient`.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Final

import httpx

from inference._backend import Emit, Generation, prompt_text
from messages import (
    BadRequest,
    FinishReason,
    Forbidden,
    GenerateRequest,
    Metadata,
    NotFound,
    Overloaded,
)

if TYPE_CHECKING:
    from config import OpenAIBackendSettings

NAME: Final = "openai"
REQUEST_ID_HEADER: Final = "X-Request-Id"
CHARS_PER_TOKEN: Final = 4
_DATA: Final = "data:"
_DONE: Final = "[DONE]"
_FINISH: Final = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_FAILED: Final = frozenset({"abort", "error"})
_HTTP_BAD_REQUEST: Final = 400
_HTTP_UNAUTHORIZED: Final = 401
_HTTP_FORBIDDEN: Final = 403
_HTTP_NOT_FOUND: Final = 404
_HTTP_TOO_LARGE: Final = 413
_HTTP_UNPROCESSABLE: Final = 422
_HTTP_TOO_MANY: Final = 429


class UpstreamError(Exception):
    """Raised when the model server fails (5xx, bad stream, connection lost)."""


class OpenAIBackend:
    """A tier worker backed by an OpenAI-compatible HTTP server.

    Args:
        url: Base URL up to `/v1` (e.g. `http://127.0.0.1:8000/v1`).
        model: The model name the server serves.
        api_key: Bearer token, if the server wants one.
        capacity: Generations sent at once.
        context_length: The model's context, in tokens.
        connect_timeout: Seconds to connect.
        response_format: `json_schema` (OpenAI's form) or `json_object`
            (with a `schema`, as llama-cpp-python's server takes it).
        request_id_header: The header that carries the message id; empty:
            none (llama-cpp-python's server answers 400 to one that is not a
            UUID).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        capacity: int = 8,
        context_length: int = 8192,
        connect_timeout: float = 5.0,
        response_format: str = "json_schema",
        request_id_header: str = REQUEST_ID_HEADER,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = NAME
        self.model = model
        self._api_key = api_key
        self.capacity = capacity
        self.context_length = context_length
        self._connect_timeout = connect_timeout
        self.response_format = response_format
        self.request_id_header = request_id_header
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def count_tokens(self, request: GenerateRequest) -> int:
        """An estimate (4 characters a token): the server's tokenizer is not here."""
        return len(prompt_text(request)) // CHARS_PER_TOKEN + 1

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            msg = f"the backend for {self.url} is closed"
            raise UpstreamError(msg)
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(None, connect=self._connect_timeout),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client; later generations fail (the pool is retired)."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def body(self, request: GenerateRequest) -> dict[str, Any]:
        """The chat-completions request for `request`."""
        if request.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            messages = [{"role": "user", "content": prompt_text(request)}]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.sampling.top_k:
            body["top_k"] = request.sampling.top_k
        if request.sampling.repetition_penalty != 1.0:
            body["repetition_penalty"] = request.sampling.repetition_penalty
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        if request.output is not None:
            schema = request.output.document()
            body["response_format"] = (
                {"type": "json_object", "schema": schema}
                if self.response_format == "json_object"
                else {
                    "type": "json_schema",
                    "json_schema": {"name": request.output.name, "schema": schema},
                }
            )
        return body

    async def generate(self, request: GenerateRequest, emit: Emit, *, meta: Metadata) -> Generation:
        """Stream one chat completion, emitting each content delta.

        The request id goes along as `X-Request-Id` and the trace context as
        `traceparent`/`tracestate`, so the server's logs and traces line up.
        """
        completion = _Completion(emit)
        try:
            async with self._http().stream(
                "POST",
                f"{self.url}/chat/completions",
                json=self.body(request),
                headers=request_headers(meta, request_id_header=self.request_id_header),
            ) as response:
                await self._check(response)
                async for line in response.aiter_lines():
                    if completion.feed(line):
                        break
        except httpx.HTTPError as exc:
            msg = f"{self.url}: {type(exc).__name__}: {exc}"
            raise UpstreamError(msg) from exc
        if not completion.ended:
            msg = f"{self.url} ended the stream before the generation finished"
            raise UpstreamError(msg)
        return completion.generation(self.count_tokens(request))

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code >= _HTTP_BAD_REQUEST:
            await response.aread()
            raise _http_error(response)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            msg = f"{self.url} did not stream (content-type {content_type!r})"
            raise UpstreamError(msg)


def request_headers(
    meta: Metadata, *, request_id_header: str = REQUEST_ID_HEADER
) -> dict[str, str]:
    """The headers that tie an upstream call to the request it serves.

    The message id goes in `request_id_header` (none if it is empty).
    """
    headers = {request_id_header: meta.id} if request_id_header else {}
    if meta.traceparent:
        headers["traceparent"] = meta.traceparent
        if meta.tracestate:
            headers["tracestate"] = meta.tracestate
    return headers


class _Completion:
    """What a chat-completions event stream has said so far."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.started = time.monotonic()
        self.first_token_s: float | None = None
        self.pieces: list[str] = []
        self.finish = FinishReason.STOP
        self.usage: dict[str, int] = {}
        self.ended = False

    def feed(self, line: str) -> bool:
        """Take one line of the stream; True at its end marker.

        The end marker ends the generation only after a `finish_reason`: a
        server that interrupts a stream (llama-cpp-python's, for a newer
        request) sends `[DONE]` without one, and that is a failure.
        """
        if line.startswith(_DATA) and line[len(_DATA) :].strip() == _DONE:
            return True
        chunk = _event(line)
        if chunk is None:
            return False
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                if self.first_token_s is None:
                    self.first_token_s = time.monotonic() - self.started
                self.pieces.append(text)
                self.emit(text)
            reason = choice.get("finish_reason")
            if reason:
                self.finish = _finish_reason(reason)
                self.ended = True
        return False

    def generation(self, estimated_prompt_tokens: int) -> Generation:
        first = self.first_token_s
        return Generation(
            text="".join(self.pieces),
            finish_reason=self.finish,
            prompt_tokens=self.usage.get("prompt_tokens", estimated_prompt_tokens),
            completion_tokens=self.usage.get("completion_tokens", len(self.pieces)),
            first_token_s=time.monotonic() - self.started if first is None else first,
        )


def _finish_reason(reason: str) -> FinishReason:
    """The finish reason a server reported; an aborted or failed generation raises."""
    if reason in _FAILED:
        msg = f"the model server ended the generation with {reason!r}"
        raise UpstreamError(msg)
    return _FINISH.get(reason, FinishReason.STOP)


def _event(line: str) -> dict[str, Any] | None:
    """The JSON of one `data:` line; None for other lines and the end marker.

    Raises:
        UpstreamError: For malformed JSON, and for an error event (what vLLM
            and others send when a generation fails mid-stream).
    """
    if not line.startswith(_DATA):
        return None
    data = line[len(_DATA) :].strip()
    if not data or data == _DONE:
        return None
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        msg = f"malformed stream event: {data[:80]!r}"
        raise UpstreamError(msg) from exc
    if not isinstance(chunk, dict):
        msg = f"malformed stream event: {data[:80]!r}"
        raise UpstreamError(msg)
    if "error" in chunk or chunk.get("object") == "error":
        msg = f"the model server failed mid-stream: {str(chunk.get('error', chunk))[:200]}"
        raise UpstreamError(msg)
    return chunk


def _http_error(response: httpx.Response) -> Exception:
    """The typed error for a refused request; upstream failures are not the caller's fault."""
    status = response.status_code
    detail = response.text[:200]
    if status in {_HTTP_BAD_REQUEST, _HTTP_TOO_LARGE, _HTTP_UNPROCESSABLE}:
        return BadRequest(f"the model server refused the request: {detail}")
    if status in {_HTTP_UNAUTHORIZED, _HTTP_FORBIDDEN}:
        return Forbidden(f"the model server refused our credentials ({status})")
    if status == _HTTP_NOT_FOUND:
        return NotFound(f"the model server has no such model or route: {detail}")
    if status == _HTTP_TOO_MANY:
        retry = response.headers.get("retry-after")
        return Overloaded(
            "the model server is rate-limiting us",
            retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
        )
    return UpstreamError(f"the model server answered {status}: {detail}")


def api_key_from_env(variable: str) -> str | None:
    """The API key in environment variable `variable` (empty name: none)."""
    return os.environ.get(variable) or None if variable else None


def openai_from_settings(settings: OpenAIBackendSettings) -> OpenAIBackend:
    """An openai backend configured by a tier's `[backend]` table."""
    return OpenAIBackend(
        settings.url,
        settings.model,
        api_key=api_key_from_env(settings.api_key_env),
        capacity=settings.capacity,
        context_length=settings.context_length,
        connect_timeout=settings.connect_timeout,
        response_format=settings.response_format,
        request_id_header=settings.request_id_header,
    )
