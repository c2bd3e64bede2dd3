"""The OpenAI API over the node's inference pool: what vLLM, TabbyAPI and LiteLLM serve.

* `POST /v1/chat/completions` and `POST /v1/completions`, plain or streamed
  (`data: {chunk}` Server-Sent Events ending with `data: [DONE]`);
* `GET /v1/models`: one model per tier, named by the tier, and `auto`.

A request's `model` is the tier it asks for; `auto` lets the pool choose
(and degrade). A named tier degrades to a smaller one only with
`X-Allow-Degrade: true`; the response's `model` is the tier that answered.
Deadlines (`X-Request-Timeout`), priorities (`X-Priority`), credentials and
admission are the node's, as on `/v1/generate`: overload is a 429 with
`Retry-After`, which the OpenAI SDK honours. Errors come in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`. Closing the connection
cancels the generation and frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Schema
from litestar.params import JSONBody
from litestar.response import Stream

from bridges.http._body import body_type
from bridges.http._generate import GENERATE
from bridges.http._problems import retry_after_header, status_of, unless_gone
from bridges.http._schema import NOT_BLANK, document_zero_bounds
from bridges.http._streams import SSE_MEDIA_TYPE
from inference import prompt_text
from messages import (
    MAX_SCHEMA_LENGTH,
    AgentError,
    BadRequest,
    ChatMessage,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    Metadata,
    OutputSchema,
    Sampling,
    TokenChunk,
)

if TYPE_CHECKING:
    from bridges.http._host import Edge
    from inference import InferencePool

AUTO: Final = "auto"
DEGRADE_HEADER: Final = "x-allow-degrade"
DONE: Final = "[DONE]"
OPENAI: Final = "openai"
"""The agent type the OpenAI-compatible routes are recorded under in the metrics."""
_NO_CACHE: Final = {"Cache-Control": "no-cache"}
_COMPLETION_MAX_TOKENS: Final = 16  # OpenAI's default for /v1/completions
_OWNER: Final = "actorfleet"
_SERVER_ERRORS: Final = 500
_TOO_MANY: Final = 429
_UNAUTHORIZED: Final = 401
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",  # OpenAI's, for a model that does not exist
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}

_STOPS: Final = 4  # OpenAI's most stop sequences
_STOP_LENGTH: Final = 256  # characters of one stop sequence
_NO_TOOLS: Final = "not supported (no tier calls tools): null or absent"
StopText = Annotated[str, msgspec.Meta(max_length=_STOP_LENGTH)]
Stop = StopText | Annotated[list[StopText], msgspec.Meta(max_length=_STOPS)] | None
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]
Tokens = Annotated[int, msgspec.Meta(ge=1, le=1 << 20)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=(1 << 32) - 1)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Prompt = Annotated[str, msgspec.Meta(pattern=NOT_BLANK)]  # what the pool takes: not blank


# --- requests -------------------------------------------------------------------


class TextPart(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """A text part of a message's content."""

    text: str


class InMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A chat message as a client sends it."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """Its content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(msgspec.Struct, frozen=True, kw_only=True):
    """`response_format.json_schema`."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class TextFormat(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """`response_format`: free text."""


class JsonObjectFormat(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="json_object"
):
    """`response_format`: any JSON object."""


class JsonSchemaResponseFormat(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="json_schema"
):
    """`response_format`: JSON of a schema."""

    json_schema: JsonSchemaFormat


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaResponseFormat


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    """`stream_options`."""

    include_usage: bool = False


class _Sampled(msgspec.Struct, frozen=True, kw_only=True):
    """What both completion requests take besides their model, prompt and length."""

    model: ModelName
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop = None
    seed: Seed | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    # Asked for, they cannot be honoured: refused (400), not silently dropped;
    # the schema says so, so that a client generated from it knows.
    logprobs: Literal[False] | None = None
    tools: Annotated[None, msgspec.Meta(description=_NO_TOOLS)] = None
    functions: Annotated[None, msgspec.Meta(description=_NO_TOOLS)] = None


class ChatCompletionRequest(_Sampled, frozen=True, kw_only=True):
    """`POST /v1/chat/completions` (the fields of OpenAI's that a tier can honour).

    Fields OpenAI defines but a tier cannot honour (`logprobs`, `tools`, ...)
    are not read.
    """

    messages: Annotated[list[InMessage], msgspec.Meta(min_length=1, max_length=1024)]
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampled, frozen=True, kw_only=True):
    """`POST /v1/completions` (legacy text completion)."""

    prompt: Prompt | Annotated[list[Prompt], msgspec.Meta(min_length=1, max_length=1)]
    max_tokens: Tokens = _COMPLETION_MAX_TOKENS


# --- responses ------------------------------------------------------------------


class CompletionUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens counted by the tier that answered."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OutMessage(msgspec.Struct, frozen=True, kw_only=True):
    """The assistant's message."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(msgspec.Struct, frozen=True, kw_only=True):
    """One choice (always one: `n = 1`)."""

    index: int = 0
    message: OutMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(msgspec.Struct, frozen=True, kw_only=True):
    """A chat completion; `model` is the tier that answered."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class Delta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a streamed chunk adds."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, frozen=True, kw_only=True):
    """A streamed chunk's choice."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True, kw_only=True):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class TextChoice(msgspec.Struct, frozen=True, kw_only=True):
    """A text completion's choice."""

    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class TextCompletion(msgspec.Struct, frozen=True, kw_only=True):
    """A text completion (or, streamed, one chunk of it)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """A model: a tier of the pool, or `auto`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = _OWNER


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """What every failure of these routes answers."""

    error: ErrorDetail


_ERROR_SPEC: Final = ResponseSpec(data_container=ErrorBody, description="OpenAI's error object")


# --- the routes -------------------------------------------------------------------


STREAMED: Final = ("/v1/chat/completions", "/v1/completions")
"""The routes that answer `text/event-stream` instead of JSON when asked to stream."""


def document_openai(app: Litestar) -> None:
    """Say in the document what Litestar leaves out: the bounds of 0, and the streamed answers."""
    document_zero_bounds(app, [ChatCompletionRequest, CompletionRequest])
    # Litestar drops the bounds of what sits inside a union: put them back.
    schemas = app.openapi_schema.components.schemas or {}
    text = Schema(type=OpenAPIType.STRING)
    stop = Schema(
        one_of=[
            text,
            Schema(type=OpenAPIType.ARRAY, items=text, max_items=_STOPS),
            Schema(type=OpenAPIType.NULL),
        ]
    )
    prompt = Schema(type=OpenAPIType.STRING, pattern=NOT_BLANK)
    prompts = Schema(
        one_of=[prompt, Schema(type=OpenAPIType.ARRAY, items=prompt, min_items=1, max_items=1)]
    )
    for name, fixes in (
        (ChatCompletionRequest.__name__, {"stop": stop}),
        (CompletionRequest.__name__, {"stop": stop, "prompt": prompts}),
    ):
        schema = schemas.get(name)
        if isinstance(schema, Schema) and schema.properties is not None:
            schema.properties.update(fixes)
    for path in STREAMED:
        item = (app.openapi_schema.paths or {}).get(path)
        operation = None if item is None else item.post
        response = None if operation is None else (operation.responses or {}).get("200")
        if isinstance(response, OpenAPIResponse) and response.content is not None:
            response.content[SSE_MEDIA_TYPE] = OpenAPIMediaType(
                schema=Schema(
                    type=OpenAPIType.STRING,
                    description="with `stream`: `data: {chunk}` events, then `data: [DONE]`",
                )
            )


def openai_routes(bridge: Edge) -> list[Any]:
    """The OpenAI-compatible routes of `bridge`."""
    started = int(time.time())
    errors = {Exception: openai_error}
    record = bridge.metrics.recorder("http", OPENAI)

    async def chat(request: Request[Any, Any, Any], data: JSONBody[ChatCompletionRequest]) -> Any:
        """Create a chat completion (OpenAI's API) from a tier of the pool."""

        async def answer() -> Any:
            generation = _from_chat(data, _allows_degrade(request))
            streamed = _streamed(data.stream, data.stream_options)
            return await _answer(bridge, request, generation, streamed, chat=True)

        return await _recorded(record, answer)

    async def complete(request: Request[Any, Any, Any], data: JSONBody[CompletionRequest]) -> Any:
        """Create a text completion (OpenAI's legacy API) from a tier of the pool."""

        async def answer() -> Any:
            generation = _from_completion(data, _allows_degrade(request))
            streamed = _streamed(data.stream, data.stream_options)
            return await _answer(bridge, request, generation, streamed, chat=False)

        return await _recorded(record, answer)

    async def models() -> ModelList:
        """The tiers of the pool, each a model, and `auto`."""
        names = [tier.name for tier in bridge.pool().pool.statistics().tiers]
        return ModelList(data=[Model(id=name, created=started) for name in [*names, AUTO]])

    chat.__annotations__["return"] = ChatCompletion
    complete.__annotations__["return"] = TextCompletion
    common: dict[str, Any] = {
        "tags": ["openai"],
        "status_code": 200,
        "guards": bridge.guards(),
        "exception_handlers": errors,
        "responses": dict.fromkeys((400, 401, 403, 404, 422, 429, 503, 504), _ERROR_SPEC),
    }
    return [
        post(
            "/v1/chat/completions",
            name="openai-chat",
            operation_id="create_chat_completion",
            summary="Create a chat completion (OpenAI API)",
            opt=body_type(ChatCompletionRequest),
            **common,
        )(chat),
        post(
            "/v1/completions",
            name="openai-completions",
            operation_id="create_completion",
            summary="Create a text completion (OpenAI API)",
            opt=body_type(CompletionRequest),
            **common,
        )(complete),
        get(
            "/v1/models",
            name="openai-models",
            operation_id="list_models",
            summary="List the models (the pool's tiers, and auto)",
            **common,
        )(models),
    ]


def _streamed(stream: bool, options: StreamOptions | None) -> Literal["no", "text", "usage"]:
    """Whether to stream, and whether a usage chunk ends the stream."""
    if not stream:
        return "no"
    return "usage" if options is not None and options.include_usage else "text"


def _allows_degrade(request: Request[Any, Any, Any]) -> bool:
    value = request.headers.get(DEGRADE_HEADER, "false").strip().lower()
    if value not in {"true", "false"}:
        msg = f"X-Allow-Degrade must be true or false, not {value[:16]!r}"
        raise BadRequest(msg)
    return value == "true"


def _tier(model: str, degrade: bool) -> tuple[str | None, bool]:
    """The tier a model name asks for (None: the pool's choice), and whether it may degrade."""
    return (None, True) if model == AUTO else (model, degrade)


def _sampling(temperature: float | None, top_p: float | None) -> Sampling:
    # OpenAI's default temperature is 1; the pool's is greedy.
    return Sampling(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
    )


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _from_chat(data: ChatCompletionRequest, degrade: bool) -> GenerateRequest:
    max_tokens = data.max_completion_tokens or data.max_tokens
    roles = {"developer": "system"}
    tier, may_degrade = _tier(data.model, degrade)
    request = GenerateRequest(
        messages=[
            ChatMessage(role=roles.get(m.role, m.role), content=m.text()) for m in data.messages
        ],
        sampling=_sampling(data.temperature, data.top_p),
        stop=_stops(data.stop),
        seed=data.seed,
        output=_output(data.response_format),
        tier=tier,
        may_degrade=may_degrade,
    )
    return (
        request if max_tokens is None else msgspec.structs.replace(request, max_tokens=max_tokens)
    )


def _from_completion(data: CompletionRequest, degrade: bool) -> GenerateRequest:
    prompt = data.prompt if isinstance(data.prompt, str) else data.prompt[0]
    tier, may_degrade = _tier(data.model, degrade)
    return GenerateRequest(
        prompt=prompt,
        max_tokens=data.max_tokens,
        sampling=_sampling(data.temperature, data.top_p),
        stop=_stops(data.stop),
        seed=data.seed,
        tier=tier,
        may_degrade=may_degrade,
    )


def _output(response_format: ResponseFormat | None) -> OutputSchema | None:
    """The output schema `response_format` asks for (None: free text)."""
    if isinstance(response_format, JsonObjectFormat):
        return OutputSchema(name="json_object", json='{"type": "object"}')
    if isinstance(response_format, JsonSchemaResponseFormat):
        schema = response_format.json_schema
        text = json.dumps(schema.schema)
        if len(text) > MAX_SCHEMA_LENGTH:
            msg = f"response_format.json_schema.schema is over {MAX_SCHEMA_LENGTH} characters"
            raise BadRequest(msg)
        return OutputSchema(name=schema.name, json=text)
    return None


async def _recorded(
    record: Callable[[str, float], None], answer: Callable[[], Awaitable[Any]]
) -> Any:
    """`answer()`, recorded in the node's metrics by its status (a stream: once it begins)."""
    begun = time.perf_counter()
    status = 200
    try:
        return await answer()
    except BaseException as error:
        status = status_of(error)
        raise
    finally:
        record(str(status), time.perf_counter() - begun)


async def _answer(
    bridge: Edge,
    request: Request[Any, Any, Any],
    generation: GenerateRequest,
    streamed: Literal["no", "text", "usage"],
    *,
    chat: bool,
) -> Any:
    if generation.output is not None:
        generation.output.document()  # a schema that is not one is a 400 here
    meta = bridge.acting(request, GENERATE, generation, bridge.metadata(request))
    pool = bridge.pool().pool
    identity = f"{'chatcmpl' if chat else 'cmpl'}-{meta.id}"
    if streamed != "no":
        prompt_text(generation)  # a bad prompt is a 400 here, not an event
        run = _Run(pool, generation, meta)
        # A failure before any text is its status, not a stream; a client that
        # leaves while it waits in the queue gives its place up at once.
        first = await unless_gone(request, asyncio.ensure_future(run.first()))
        usage = streamed == "usage"
        tier = generation.tier or AUTO
        events = _stream(run, first, identity, tier, chat=chat, usage=usage)
        return Stream(_sse(events), media_type=SSE_MEDIA_TYPE, headers=_NO_CACHE)
    submitted = bridge.in_flight(asyncio.ensure_future(pool.submit(generation, meta)))
    result: GenerateResult = await unless_gone(request, submitted)
    return _completion(result, identity, chat=chat)


Finish = Literal["stop", "length"]


async def _sse(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """Each event as one `data:` line of Server-Sent Events, as OpenAI sends them."""
    async for data in events:
        yield f"data: {data}\n\n".encode()


def _finish(reason: FinishReason) -> Finish:
    return "length" if reason == FinishReason.LENGTH else "stop"


def _usage(result: GenerateResult) -> CompletionUsage:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _completion(result: GenerateResult, identity: str, *, chat: bool) -> Any:
    created = int(time.time())
    if chat:
        choice = ChatChoice(
            message=OutMessage(content=result.text), finish_reason=_finish(result.finish_reason)
        )
        return ChatCompletion(
            id=identity, created=created, model=result.tier, choices=[choice], usage=_usage(result)
        )
    text = TextChoice(text=result.text, finish_reason=_finish(result.finish_reason))
    return TextCompletion(
        id=identity, created=created, model=result.tier, choices=[text], usage=_usage(result)
    )


class _Run:
    """A generation started for a stream: its task and the chunks it has sent."""

    def __init__(self, pool: InferencePool, generation: GenerateRequest, meta: Metadata) -> None:
        self.chunks: asyncio.Queue[TokenChunk | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(
            pool.submit(generation, meta, on_chunk=self.chunks.put_nowait)
        )
        self.task.add_done_callback(lambda _t: self.chunks.put_nowait(None))

    async def first(self) -> TokenChunk | None:
        """The first chunk, once there is one (None: it ended without any).

        Raises:
            AgentError: The generation failed before its first chunk (an
                unknown tier, an overload, a prompt over the context): the
                answer is then that error's status, not a stream.
        """
        try:
            chunk = await self.chunks.get()
            if chunk is None:
                self.task.result()  # raises its typed error, if any
        except BaseException:
            self.task.cancel()
            raise
        return chunk


async def _stream(
    run: _Run,
    first: TokenChunk | None,
    identity: str,
    tier: str,
    *,
    chat: bool,
    usage: bool,
) -> AsyncIterator[str]:
    """The generation as OpenAI's chunks, then `[DONE]`; leaving early cancels it."""
    created = int(time.time())
    try:
        chunk, opening = first, True
        while chunk is not None:
            yield _chunk(identity, created, tier, chunk.text, first=opening, chat=chat)
            chunk, opening = await run.chunks.get(), False
        try:
            result = run.task.result()
        except AgentError as error:
            yield msgspec.json.encode(_error_body(error, status_of(error))).decode()
            yield DONE
            return
        end = _finish(result.finish_reason)
        yield _last(identity, created, result.tier, end, chat=chat)
        if usage:
            yield _usage_chunk(identity, created, result, chat=chat)
        yield DONE
    finally:
        run.task.cancel()


def _chunk(identity: str, created: int, tier: str, text: str, *, first: bool, chat: bool) -> str:
    if chat:
        delta = Delta(role="assistant", content=text) if first else Delta(content=text)
        body: Any = ChatCompletionChunk(
            id=identity, created=created, model=tier, choices=[ChunkChoice(delta=delta)]
        )
    else:
        body = TextCompletion(
            id=identity,
            created=created,
            model=tier,
            choices=[TextChoice(text=text, finish_reason=None)],
        )
    return msgspec.json.encode(body).decode()


def _last(
    identity: str, created: int, tier: str, end: Literal["stop", "length"], *, chat: bool
) -> str:
    if chat:
        choice = ChunkChoice(delta=Delta(), finish_reason=end)
        body: Any = ChatCompletionChunk(id=identity, created=created, model=tier, choices=[choice])
    else:
        body = TextCompletion(
            id=identity,
            created=created,
            model=tier,
            choices=[TextChoice(text="", finish_reason=end)],
        )
    return msgspec.json.encode(body).decode()


def _usage_chunk(identity: str, created: int, result: GenerateResult, *, chat: bool) -> str:
    kind: Any = ChatCompletionChunk if chat else TextCompletion
    body = kind(id=identity, created=created, model=result.tier, choices=[], usage=_usage(result))
    return msgspec.json.encode(body).decode()


# --- errors ---------------------------------------------------------------------


def _error_body(error: BaseException, status: int) -> ErrorBody:
    code: str | None
    if isinstance(error, AgentError):
        message, code = error.message, str(error.code)
    elif isinstance(error, ValidationException):
        message, code = str(error.detail), "invalid_request"
        if isinstance(error.extra, list) and error.extra:
            message = (
                "; ".join(
                    f"{item.get('key', '')}: {item.get('message', '')}".strip(": ")
                    for item in error.extra
                    if isinstance(item, dict)
                )
                or message
            )
    elif isinstance(error, HTTPException):
        # OpenAI's code for a missing or bad key, which clients look for.
        message, code = str(error.detail), "invalid_api_key" if status == _UNAUTHORIZED else None
    else:
        message, code = "internal error", "internal"
    fallback = "server_error" if status >= _SERVER_ERRORS else "invalid_request_error"
    kind = _ERROR_TYPES.get(status, fallback)
    return ErrorBody(error=ErrorDetail(message=message, type=kind, code=code))


def openai_error(_request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    """A failure of these routes, in OpenAI's error shape (with `Retry-After` on a 429)."""
    status = status_of(error)
    if isinstance(error, ValidationException):
        status = 400
    headers: dict[str, str] = dict(getattr(error, "headers", None) or {})
    retry_after = getattr(error, "retry_after", None)
    if status == _TOO_MANY and retry_after is None:
        # The pool cannot tell when yet (no generation has finished on the
        # tier): a second, so that clients back off and come back.
        retry_after = 1.0
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = retry_after_header(retry_after)
    return Response(_error_body(error, status), status_code=status, headers=headers)
