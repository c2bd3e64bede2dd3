"""Requests to agents over NATS, as the bridge sends them: plain, streamed, settled.

Each call runs on the bridge's loop and ends by settling the caller's
`Reply` exactly once: with the answer, a typed error from the other side, or
a typed error of its own (no responders, deadline, connection gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import nats.errors

from bridges.nats._inbox import no_responders
from bridges.nats._wire import STREAM_HEADER, decode_reply, decode_stream_frame
from messages import AgentError, InternalError, RequestTimeout, Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client

    from actors import Reply
    from bridges.nats._inbox import Inbox

logger: Final = logging.getLogger("actorfleet.nats")

# Sends of one request while nodes answer that they have no agent of the type.
_ELSEWHERE_ATTEMPTS: Final = 3


async def settle(subject: str, reply: Reply[Any], answer: Awaitable[Any]) -> None:
    """Settle `reply` with what `answer` gives, or the typed error it raises."""
    try:
        reply.set(await answer)
    except AgentError as error:
        reply.fail(error)
    except asyncio.CancelledError:
        reply.fail(Unavailable(f"the NATS bridge closed before {subject} answered"))
        raise
    except Exception as exc:
        logger.exception("request to %s failed", subject)
        reply.fail(InternalError(f"request to {subject} failed: {type(exc).__name__}"))


async def stream_reply(
    nc: Client, inbox: Inbox, subject: str, body: bytes, reply: Reply[Any]
) -> Any:
    """A request whose handler emits chunks: relay them to `reply`, return the answer.

    The responder answers on our own inbox: chunk frames first, then the
    reply (see `bridges.nats._wire.STREAM_HEADER`).
    """
    answer_to, frames = await inbox.open()
    try:
        await nc.publish(subject, body, reply=answer_to, headers={STREAM_HEADER: "1"})
        async with asyncio.timeout(reply.deadline - time.time()):
            while True:
                msg = await frames.get()
                if no_responders(msg):
                    text = f"no agent answers on {subject}"
                    raise Unavailable(text)
                chunk, value = decode_stream_frame(msg.data)
                if not chunk:
                    return value
                on_chunk = reply.on_chunk
                if on_chunk is not None and not reply.done():
                    on_chunk(value)
    except TimeoutError:
        text = f"no reply from {subject} before the deadline"
        raise RequestTimeout(text) from None
    finally:
        inbox.done(answer_to)


async def request_reply(
    connection: Callable[[], Client | None], subject: str, body: bytes, deadline: float
) -> Any:
    """Send, and retry at once while a node answers that it has no agent of the type.

    In a queue group a node whose agents all just died still receives
    requests until it has left the group; it answers `unavailable` with a
    zero `retry_after`, and NATS picks a member at random, so trying again
    reaches a node that can serve. `connection` gives the live client (or
    None) at each try.
    """
    tries_left = _ELSEWHERE_ATTEMPTS
    while True:
        timeout = deadline - time.time()
        if timeout <= 0:
            msg = f"deadline passed before sending to {subject}"
            raise RequestTimeout(msg)
        nc = connection()
        if nc is None:
            msg = "the NATS bridge is not connected"
            raise Unavailable(msg)
        try:
            response = await nc.request(subject, body, timeout=timeout)
        except nats.errors.NoRespondersError:
            msg = f"no agent answers on {subject}"
            raise Unavailable(msg) from None
        except (nats.errors.TimeoutError, TimeoutError):
            msg = f"no reply from {subject} within {timeout:.3f} s"
            raise RequestTimeout(msg) from None
        except (nats.errors.Error, OSError) as exc:
            msg = f"request to {subject} failed: {exc}"
            raise Unavailable(msg) from exc
        try:
            return decode_reply(response.data, response.headers)
        except Unavailable as error:
            tries_left -= 1
            if error.retry_after != 0 or not tries_left:
                raise
