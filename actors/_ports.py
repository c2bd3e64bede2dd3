"""The protocols through which agents reach the world; the bridges implement them.

A `Runtime` holds one of each while it is connected: the `Transport` to
other nodes and the event stream, the `Inference` pool behind
`ctx.generate`, the `StateStore` behind `ctx.state` and the `AuditLog`
of generations. All are synchronous, because handlers run on actor
threads; implementations over asyncio hop onto the node's I/O loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    from actors._call import Call
    from messages import (
        AuditRecord,
        Event,
        GenerateRequest,
        GenerateResult,
        Metadata,
        TokenChunk,
    )


class Transport(Protocol):
    """How a node reaches agents elsewhere and publishes events (the NATS bridge)."""

    def deliver(self, agent_type: str, call: Call) -> bool:
        """Send `call` to some agent of `agent_type`; False if it cannot be sent.

        Returns at once; the call's reply is settled later, from another thread.
        """
        ...

    def publish(self, event: Event, meta: Metadata) -> None:
        """Store a domain event durably; return once it is stored.

        Raises:
            messages.AgentError: Typed failure (unavailable, timeout, ...).
        """
        ...


class Inference(Protocol):
    """How agents reach the inference pool (`ctx.generate`); the pool lives on the I/O loop."""

    def generate(self, request: GenerateRequest, meta: Metadata) -> GenerateResult:
        """Generate and wait for the result, no later than `meta.deadline`.

        Raises:
            messages.AgentError: Typed failure (overloaded, timeout, bad request, ...).
        """
        ...

    def stream(self, request: GenerateRequest, meta: Metadata) -> GenerationStream:
        """Generate, yielding chunks as they come; the result follows the last."""
        ...


class GenerationStream(Protocol):
    """Chunks of a generation as they arrive; `result` once the iteration ends."""

    def __iter__(self) -> Iterator[TokenChunk]:
        """Yield chunks until the generation ends (raises its typed error, if any)."""
        ...

    @property
    def result(self) -> GenerateResult:
        """The final result (after the iteration has ended)."""
        ...

    def close(self) -> None:
        """Stop early: the generation is cancelled and its slot freed."""
        ...


class StateStore(Protocol):
    """Key-value state with expiry and compare-and-set.

    Agents hold no state between messages; what must survive a restart
    lives here, keyed by conversation or message id. Keys are
    dot-separated tokens of `[A-Za-z0-9_=-]`, at most `MAX_KEY_LENGTH`
    characters (build them with `state_key`); every store refuses another
    key, or a scan prefix, with `messages.InvalidKey` before it reaches
    the backend. Implementations: `MemoryStore`; JetStream KV and Redis in
    `bridges`. One test suite runs against all three.
    """

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None if absent or expired."""
        ...

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store `value`; it expires after `ttl` seconds if given."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` (no-op if absent)."""
        ...

    def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        """Store `value` only if the current value is `expected` (None: absent).

        Returns:
            Whether the value was stored. `compare_and_set(key, None, v)` is
            how a side effect claims an idempotency key exactly once.
        """
        ...

    def scan(self, prefix: str) -> list[str]:
        """Every live key under `prefix.` (keys made by `state_key(prefix, ...)`), sorted."""
        ...


class AuditLog(Protocol):
    """Where audit records go: an append-only stream (the bridges' JetStream log)."""

    def append(self, record: AuditRecord) -> None:
        """Store `record`; return once it is stored.

        Raises:
            messages.Unavailable: If it could not be stored.
        """
        ...
