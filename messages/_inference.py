"""The inference protocol: a generation request, streamed chunks, the final result."""

from __future__ import annotations

import enum
import functools
import re
from typing import Annotated, Any, Final, TypeVar

import msgspec

from messages._base import Message
from messages._errors import BadRequest, OutputInvalid

T = TypeVar("T")

MAX_SEED: Final = (1 << 63) - 1
"""The largest seed: a signed 64-bit integer, as OpenAI-compatible servers (vLLM) take."""
MAX_TOP_K: Final = (1 << 31) - 1
"""The largest `top_k`: a 32-bit integer, as the engines' samplers take."""

MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1 << 20)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEED)]
MAX_SCHEMA_LENGTH: Final = 64 * 1024
"""The longest output schema (its JSON text) a generation may carry."""
SCHEMA_NAME_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$(?!\n)"
"""An output schema's name, as OpenAI's `json_schema.name` allows it."""


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One turn of a chat prompt.

    Attributes:
        role: `system`, `user` or `assistant`.
        content: The turn's text.
    """

    role: str
    content: str


class Sampling(msgspec.Struct, frozen=True, kw_only=True):
    """How tokens are drawn. The defaults are greedy decoding.

    Attributes:
        temperature: 0 is greedy.
        top_p: Nucleus sampling mass (1 keeps every token).
        top_k: Keep the k most likely tokens (0 keeps all).
        repetition_penalty: 1 applies none.
    """

    temperature: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.0
    top_p: Probability = 1.0
    top_k: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_K)] = 0
    repetition_penalty: Annotated[float, msgspec.Meta(ge=0.5, le=5)] = 1.0


class OutputSchema(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON value a generation must produce, as a JSON Schema.

    Backends constrain decoding to it (a llama.cpp grammar, OpenAI's
    `response_format`, an exllamav2 token filter); `output_schema(T)` makes
    one from any msgspec-decodable type.

    Attributes:
        name: What it is called (`SupportDecision`), for the backends that name it.
        json: The JSON Schema, as JSON text of an object (a bounded string,
            so that a schema's size is checked before anything parses it);
            other text is a `BadRequest` when a backend reads it.
    """

    name: Annotated[str, msgspec.Meta(pattern=SCHEMA_NAME_PATTERN)]
    json: Annotated[str, msgspec.Meta(min_length=2, max_length=MAX_SCHEMA_LENGTH)]

    def document(self) -> dict[str, Any]:
        """The schema as a JSON object.

        Raises:
            BadRequest: If `json` is not JSON, or not an object.
        """
        try:
            schema = msgspec.json.decode(self.json)
        except msgspec.DecodeError as exc:
            msg = f"output schema {self.name} is not JSON: {exc}"
            raise BadRequest(msg) from exc
        except RecursionError as exc:
            msg = f"output schema {self.name} is nested too deeply"
            raise BadRequest(msg) from exc
        if not isinstance(schema, dict):
            msg = f"output schema {self.name} is not a JSON object"
            raise BadRequest(msg)
        return schema


def output_schema(output: object) -> OutputSchema:
    """The `OutputSchema` of a msgspec-decodable type (a Struct, a list of them, ...).

    The root is inlined (msgspec puts a Struct's schema under `$defs` and
    refers to it), so the schema's top level is the object itself, as
    OpenAI's `json_schema` and llama.cpp's grammar converter expect. Made
    once per type.

    Raises:
        BadRequest: If msgspec cannot describe the type (a function, `object`).
    """
    try:
        return _output_schema(output)
    except (TypeError, ValueError) as exc:  # msgspec cannot describe it
        msg = f"no JSON Schema for output type {output!r}: {exc}"
        raise BadRequest(msg) from exc


@functools.cache
def _output_schema(output: Any) -> OutputSchema:
    schema: dict[str, Any] = msgspec.json.schema(output)
    root = schema.get("$ref", "")
    defs: dict[str, Any] = schema.get("$defs", {})
    prefix = "#/$defs/"
    if isinstance(root, str) and root.startswith(prefix) and root[len(prefix) :] in defs:
        schema = {**defs[root[len(prefix) :]], "$defs": defs}
    name = output.__name__ if isinstance(output, type) else "output"
    if not _NAME.match(name):
        name = "output"
    return OutputSchema(name=name, json=msgspec.json.encode(schema).decode())


def decode_output(text: str, output: type[T]) -> T:
    """`text` decoded as JSON into `output`, the type its generation was asked to produce.

    Raises:
        OutputInvalid: If it is not JSON, or not a valid `output` (e.g. cut
            short by `max_tokens`).
    """
    try:
        return msgspec.json.decode(text, type=output)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        name = getattr(output, "__name__", str(output))
        raise OutputInvalid(name, str(exc)[:_MAX_ERROR], text=text) from exc


class GenerateRequest(Message, frozen=True, kw_only=True):
    """Ask the inference pool for a completion.

    Exactly one of `prompt` and `messages` is given. Deadline and priority
    come from the request's metadata, like any other request's.

    Attributes:
        prompt: Raw prompt text.
        messages: Chat turns, rendered with the model's chat template.
        max_tokens: Most tokens to generate.
        sampling: Sampling settings.
        seed: Seed for sampling, 0 to `MAX_SEED`; the same seed, prompt and
            settings give the same text on the same model with llama.cpp
            and the scripted backend (exllamav2 does not promise it).
        stop: Strings that end the generation (not included in the text).
        tier: Preferred model tier (`large`, `small`, ...); None: the pool's default.
        may_degrade: Whether a smaller tier may answer when the preferred one
            would miss the deadline, is full or is down.
        output: The JSON the text must be; None: free text.
    """

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    max_tokens: MaxTokens = 256
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    seed: Seed | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    tier: str | None = None
    may_degrade: bool = True
    output: OutputSchema | None = None


_NAME: Final = re.compile(SCHEMA_NAME_PATTERN)
_MAX_ERROR: Final = 300


def prompt_text(request: GenerateRequest) -> str:
    """The request's prompt as one string: raw, or chat turns one per line.

    Raises:
        BadRequest: If neither or both of `prompt` and `messages` are given,
            or the prompt is empty.
    """
    if (request.prompt is None) == (request.messages is None):
        msg = "give exactly one of prompt and messages"
        raise BadRequest(msg)
    if request.prompt is not None:
        text = request.prompt
    else:
        text = "\n".join(f"{m.role}: {m.content}" for m in request.messages or ())
    if not text.strip():
        msg = "the prompt is empty"
        raise BadRequest(msg)
    return text


class FinishReason(enum.StrEnum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """What a generation cost and where its time went.

    Attributes:
        prompt_tokens: Tokens in the prompt.
        completion_tokens: Tokens generated.
        queue_s: Seconds waiting for a slot in the pool.
        prefill_s: Seconds until the first token (after the queue).
        generate_s: Seconds from the first token to the last.
    """

    prompt_tokens: int
    completion_tokens: int
    queue_s: float = 0.0
    prefill_s: float = 0.0
    generate_s: float = 0.0


class TokenChunk(Message, frozen=True, kw_only=True):
    """A piece of a streamed generation.

    Attributes:
        index: Position of this chunk in the stream, from 0.
        text: The new text.
    """

    index: int
    text: str


class GenerateResult(Message, frozen=True, kw_only=True):
    """The end of a generation.

    Attributes:
        text: The whole generated text (streamed or not).
        finish_reason: Why it ended.
        usage: Token counts and timings.
        tier: The tier that answered (may differ from the one asked for).
        model: The model that answered.
        backend: `exllamav2`, `openai` or `scripted`.
        degraded: Whether a smaller tier answered than the one preferred.
    """

    text: str
    finish_reason: FinishReason
    usage: Usage
    tier: str
    model: str
    backend: str
    degraded: bool = False


class GenerationStarted(Message, frozen=True, kw_only=True):
    """A model worker took a request sent to `af.inf.<tier>`: the first frame it streams back.

    Attributes:
        worker: The worker's id.
        control: Where to send `CancelGeneration` for this request.
        backend: The worker's backend (`exllamav2`, `openai`, `scripted`).
        model: The worker's model.
        capacity: Generations the worker runs at once.
        context_length: Most prompt plus completion tokens of its model.
        heartbeat: Seconds between the `GenerationAlive` frames it sends
            while a generation runs; a caller that hears nothing for a few
            of them takes the worker for dead.
    """

    worker: str
    control: str
    backend: str
    model: str
    capacity: int
    context_length: int
    heartbeat: float


class WorkerReady(Message, frozen=True, kw_only=True):
    """A model worker now takes requests (published on `af.inf.<tier>.ready`).

    Attributes:
        worker: The worker's id.
        tier: The tier it serves.
        backend: Its backend.
        model: Its model.
        capacity: Generations it runs at once.
    """

    worker: str
    tier: str
    backend: str
    model: str
    capacity: int


class GenerationAlive(Message, frozen=True, kw_only=True):
    """The worker still runs the generation (sent every `heartbeat` seconds)."""


class CancelGeneration(Message, frozen=True, kw_only=True):
    """Stop the generation of request `id` (sent to the worker's `control` subject).

    Attributes:
        id: The message id of the `GenerateRequest`.
    """

    id: str


InferenceMessage = (
    GenerateRequest
    | TokenChunk
    | GenerateResult
    | GenerationStarted
    | GenerationAlive
    | CancelGeneration
    | WorkerReady
)
