"""The one protocol every model backend speaks, on the node's I/O loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from messages import BadRequest, FinishReason, GenerateRequest, Metadata

Emit = Callable[[str], None]


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend reports at the end of one generation.

    Attributes:
        text: The generated text, stop string excluded.
        finish_reason: Why it ended.
        prompt_tokens: Tokens in the prompt.
        completion_tokens: Tokens generated.
        first_token_s: Seconds from the start of the call to the first token.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float


class Backend(Protocol):
    """A model behind one tier worker.

    Backends run on the I/O loop: `generate` is a coroutine that streams text
    through `emit` as it is produced and is cancelled (the task is) when the
    request's deadline passes or its caller goes away.
    """

    @property
    def name(self) -> str:
        """`exllamav2`, `openai` or `scripted`."""
        ...

    @property
    def model(self) -> str:
        """The model's name, as results and statistics show it."""
        ...

    @property
    def capacity(self) -> int:
        """How many generations it runs at once (1 without continuous batching)."""
        ...

    @property
    def context_length(self) -> int:
        """Most tokens of prompt plus completion."""
        ...

    def count_tokens(self, request: GenerateRequest) -> int:
        """Tokens in the request's prompt, as this backend's tokenizer counts them."""
        ...

    async def generate(self, request: GenerateRequest, emit: Emit, *, meta: Metadata) -> Generation:
        """Run one generation, calling `emit(text)` for each new piece.

        `meta` is the request's metadata (id, deadline, priority, trace
        context), for backends that pass the request on.
        """
        ...


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
