"""Agent replies and generations streamed over HTTP as Server-Sent Events.

An agent whose handlers `ctx.emit` chunks (and say so with `chunk_type`)
gets `POST /v1/agents/<type>/stream`: one `chunk` event per emitted chunk,
then one `result` or `error` event. Chunks cross from the handler's thread
(or, for an agent on another node, from the NATS bridge) in order and before
the reply. Closing the connection fails the pending reply: a queued request
is skipped, and a running handler's further chunks go nowhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
from litestar.openapi import ResponseSpec
from litestar.response import ServerSentEventMessage

from bridges._seam import Cancelled
from bridges.http._problems import CLIENT_CLOSED, Problem, error_response, status_of
from messages import (
    AgentError,
    GenerateRequest,
    InternalError,
    Metadata,
    RequestTimeout,
    TokenChunk,
)

if TYPE_CHECKING:
    from actors import Runtime
    from inference import InferencePool

SSE_MEDIA_TYPE: Final = "text/event-stream"
# The agent answers by the deadline; this covers the hop back.
HOP_MARGIN: Final = 0.5
_END: Final = object()
OK: Final = 200
TIMED_OUT: Final = 504


class StreamEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One Server-Sent Event of a streamed reply.

    Attributes:
        event: `chunk`, then `result` or `error`.
        data: JSON of a chunk, the reply, or a problem.
    """

    event: Literal["chunk", "result", "error"]
    data: str


SSE_RESPONSE: Final = ResponseSpec(
    data_container=StreamEvent,
    media_type=SSE_MEDIA_TYPE,
    description="`chunk` events, then one `result` or `error` event",
)


def problem(error: AgentError) -> Problem:
    """The problem body an `error` event carries."""
    return error_response(error).content


def event(kind: str, value: Any) -> ServerSentEventMessage:
    """One SSE message carrying `value` as JSON."""
    return ServerSentEventMessage(event=kind, data=msgspec.json.encode(value).decode())


async def relay_agent_stream(
    runtime: Runtime,
    agent_type: str,
    message: Any,
    meta: Metadata,
    *,
    record: Callable[[int], None],
) -> AsyncIterator[ServerSentEventMessage]:
    """Ask `agent_type` for a streamed reply and yield it as SSE messages."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()

    def on_chunk(chunk: Any) -> None:
        loop.call_soon_threadsafe(items.put_nowait, chunk)

    def settled(_reply: Any) -> None:
        loop.call_soon_threadsafe(items.put_nowait, _END)

    reply = runtime.ref(agent_type).ask_async(
        message,
        message_id=meta.id,
        priority=meta.priority,
        sender="http",
        cause=meta,
        on_chunk=on_chunk,
    )
    reply.add_done_callback(settled)
    status = OK
    try:
        async with asyncio.timeout(max(meta.deadline - time.time(), 0) + HOP_MARGIN):
            while (item := await items.get()) is not _END:
                yield event("chunk", item)
        outcome = reply.result()
        if isinstance(outcome, BaseException):
            error = outcome if isinstance(outcome, AgentError) else InternalError("failed")
            status = status_of(error)
            yield event("error", problem(error))
        else:
            yield event("result", outcome)
    except TimeoutError:
        reply.fail(RequestTimeout("no answer before the deadline"))
        status = TIMED_OUT
        yield event("error", problem(RequestTimeout(f"{agent_type} did not answer in time")))
    except BaseException:
        if status == OK:
            status = CLIENT_CLOSED
        raise
    finally:
        if not reply.done():
            reply.fail(Cancelled("the HTTP client went away"))
        record(status)


async def relay_generation(
    pool: InferencePool,
    data: GenerateRequest,
    meta: Metadata,
    *,
    record: Callable[[int], None],
) -> AsyncIterator[ServerSentEventMessage]:
    """Run a generation on `pool` and yield its chunks and result as SSE messages.

    Leaving early (the client went away) cancels the generation, which frees
    its slot.
    """
    chunks: asyncio.Queue[TokenChunk | None] = asyncio.Queue()
    status = OK
    task = asyncio.ensure_future(pool.submit(data, meta, on_chunk=chunks.put_nowait))
    task.add_done_callback(lambda _t: chunks.put_nowait(None))
    try:
        while (chunk := await chunks.get()) is not None:
            yield event("chunk", chunk)
        try:
            result = task.result()
        except AgentError as error:
            status = status_of(error)
            yield event("error", problem(error))
        else:
            yield event("result", result)
    except BaseException:
        status = CLIENT_CLOSED
        raise
    finally:
        if not task.done():
            task.cancel()
        record(status)
