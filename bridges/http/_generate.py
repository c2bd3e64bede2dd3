"""`POST /v1/generate` and `/v1/generate/stream`: the node's inference pool over HTTP.

A credential limited to some agent types (`agents`) reaches these only if
`generate` is among them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

from litestar import Request, post
from litestar.params import JSONBody
from litestar.response import ServerSentEvent

from bridges.http._body import body_type
from bridges.http._problems import PROBLEMS, unless_gone
from bridges.http._streams import SSE_MEDIA_TYPE, SSE_RESPONSE, relay_generation
from inference import prompt_text
from messages import GenerateRequest, GenerateResult, Metadata

if TYPE_CHECKING:
    from bridges.http._host import Edge


GENERATE: Final = "generate"
"""What a credential's `agents` must list for it to reach the generation routes."""


def generate_routes(bridge: Edge) -> list[Any]:
    """The two generation routes of `bridge`."""
    return [_generate_route(bridge), _generate_stream_route(bridge)]


def _generate_route(bridge: Edge) -> Any:
    async def generate(request: Request[Any, Any, Any], data: JSONBody[GenerateRequest]) -> Any:
        return await bridge.observed(
            GENERATE,
            request,
            lambda meta: _generate(
                bridge, request, data, bridge.acting(request, GENERATE, data, meta)
            ),
        )

    generate.__annotations__["return"] = GenerateResult
    return post(
        "/v1/generate",
        name="generate",
        operation_id="generate",
        summary="Generate a completion from the node's inference pool",
        tags=["inference"],
        status_code=200,
        responses=PROBLEMS,
        guards=bridge.guards(),
        opt=body_type(GenerateRequest),
    )(generate)


async def _generate(
    bridge: Edge, request: Request[Any, Any, Any], data: GenerateRequest, meta: Metadata
) -> Any:
    pool = bridge.pool().pool
    # The pool answers by the deadline; leaving early cancels and frees the slot.
    answer = bridge.in_flight(asyncio.ensure_future(pool.submit(data, meta)))
    return await unless_gone(request, answer)


def _generate_stream_route(bridge: Edge) -> Any:
    record = bridge.metrics.recorder("http", GENERATE)

    async def generate_stream(
        request: Request[Any, Any, Any], data: JSONBody[GenerateRequest]
    ) -> ServerSentEvent:
        """Chunks as `chunk` events, then one `result` (or `error`) event.

        Closing the connection cancels the generation and frees its slot.
        """
        meta = bridge.acting(request, GENERATE, data, bridge.metadata(request))
        prompt_text(data)  # a bad prompt is a 400 here, not an event
        pool = bridge.pool().pool
        started = time.perf_counter()
        return ServerSentEvent(
            relay_generation(
                pool,
                data,
                meta,
                record=lambda status: record(str(status), time.perf_counter() - started),
            )
        )

    return post(
        "/v1/generate/stream",
        name="generate-stream",
        operation_id="generate_stream",
        summary="Stream a completion as Server-Sent Events",
        tags=["inference"],
        status_code=200,
        media_type=SSE_MEDIA_TYPE,
        responses={200: SSE_RESPONSE, **PROBLEMS},
        guards=bridge.guards(),
        opt=body_type(GenerateRequest),
    )(generate_stream)
