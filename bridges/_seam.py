"""The pool as agents see it: blocking and streaming calls from actor threads."""

from __future__ import annotations

import concurrent.futures
import queue
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Self

from messages import (
    GenerateRequest,
    GenerateResult,
    Metadata,
    RequestTimeout,
    TokenChunk,
    Unavailable,
)

if TYPE_CHECKING:
    from bridges._loop import IoLoop
    from inference._pool import InferencePool

# The pool answers by the deadline itself; this only covers the hop back.
_HOP_MARGIN: Final = 1.0


class PoolClient:
    """Implements `actors.Inference` over an `InferencePool` on the node's I/O loop.

    Args:
        pool: The pool.
        io: The loop the pool runs on.
    """

    def __init__(self, pool: InferencePool, io: IoLoop) -> None:
        self.pool = pool
        self.io = io

    def generate(self, request: GenerateRequest, meta: Metadata) -> GenerateResult:
        """Generate and wait, on the calling (actor) thread."""
        future = self.io.submit(self.pool.submit(request, meta))
        try:
            return future.result(_wait(meta))
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the pool's own typed RequestTimeout (also a TimeoutError)
            future.cancel()
            msg = "the inference pool did not answer before the deadline"
            raise RequestTimeout(msg) from None

    def stream(self, request: GenerateRequest, meta: Metadata) -> Stream:
        """Start a generation whose chunks the caller iterates over."""
        return Stream(self, request, meta)


_END: Final = object()


class Cancelled(Unavailable):
    """Raised when the result of a stream that was closed early is asked for."""


class Stream:
    """Chunks handed from the loop to the iterating thread through a queue.

    Leaving the iteration early (break, an exception) cancels the generation
    and frees its slot, as `close()` does; use it as a context manager to
    be sure of that when not iterating at all.
    """

    def __init__(self, client: PoolClient, request: GenerateRequest, meta: Metadata) -> None:
        self._meta = meta
        self._chunks: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._result: GenerateResult | None = None
        self._future: concurrent.futures.Future[GenerateResult] = client.io.submit(
            client.pool.submit(request, meta, on_chunk=self._chunks.put)
        )
        self._future.add_done_callback(lambda _f: self._chunks.put(_END))

    def __iter__(self) -> Iterator[TokenChunk]:
        """Yield chunks until the generation ends; raise its typed error if it failed."""
        finished = False
        try:
            while True:
                try:
                    item = self._chunks.get(timeout=max(_wait(self._meta), 0.0))
                except queue.Empty:
                    msg = "no chunk before the deadline"
                    raise RequestTimeout(msg) from None
                if item is _END:
                    finished = True
                    self._result = self._outcome()
                    return
                assert isinstance(item, TokenChunk)  # noqa: S101 - only chunks and _END queued
                yield item
        finally:
            if not finished:
                self.close()

    def _outcome(self) -> GenerateResult:
        try:
            return self._future.result()
        except concurrent.futures.CancelledError:
            msg = "the stream was closed before the generation ended"
            raise Cancelled(msg) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def result(self) -> GenerateResult:
        """The final result; iterate first (this waits for the end if needed)."""
        if self._result is None:
            if self._future.cancelled():
                return self._outcome()
            for _chunk in self:
                pass
        assert self._result is not None  # noqa: S101 - set when the iteration ends
        return self._result

    def close(self) -> None:
        """Stop early: cancel the generation, which frees its slot."""
        self._future.cancel()


def _wait(meta: Metadata) -> float:
    return meta.deadline - time.time() + _HOP_MARGIN
