"""The one protocol every model backend speaks, on the node's I/O loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from messages import FinishReason, GenerateRequest, Metadata
from messages import prompt_text as prompt_text  # noqa: PLC0414 - re-exported to the backends

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
    request's deadline passes or its caller goes away. This is everything the
    pool asks of a worker.
    """

    @property
    def name(self) -> str:
        """Its kind, as the `[backend]` table names it (`openai`, `scripted`, ...)."""
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

    async def aclose(self) -> None:
        """Let go of what it holds (a model, a connection, a thread); a no-op if nothing.

        The pool calls it once, when it is retired and its work has ended or been
        given up on.
        """
        ...
