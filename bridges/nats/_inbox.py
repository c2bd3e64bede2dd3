"""Reply subjects for calls answered with several messages, on one subscription."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING, Final

import nats.errors

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

_STATUS: Final = "Status"
_NO_RESPONDERS: Final = "503"


def no_responders(msg: Msg) -> bool:
    """Whether `msg` is the server saying nobody is subscribed to the request's subject."""
    return bool(msg.headers) and msg.headers.get(_STATUS) == _NO_RESPONDERS  # type: ignore[union-attr]


class Inbox:
    """One wildcard subscription that sorts the frames of every streamed call by its token.

    A call that takes several messages (a streamed reply, a generation) gets
    its own reply subject under the inbox's prefix and a queue of what
    arrives there, without a subscription of its own.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._calls: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count()
        self._subscribing = asyncio.Lock()

    async def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A reply subject and the queue its frames arrive in."""
        async with self._subscribing:
            if self._subscription is None:
                self._subscription = await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_frame)
        token = str(next(self._tokens))
        frames: asyncio.Queue[Msg] = asyncio.Queue()
        self._calls[token] = frames
        return f"{self.prefix}.{token}", frames

    def done(self, subject: str) -> None:
        """Forget a call's reply subject (frames still arriving are dropped)."""
        self._calls.pop(subject.rpartition(".")[2], None)

    async def _on_frame(self, msg: Msg) -> None:
        frames = self._calls.get(msg.subject.rpartition(".")[2])
        if frames is not None:
            frames.put_nowait(msg)

    async def close(self) -> None:
        """Unsubscribe, if the connection still stands."""
        if self._subscription is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
        self._subscription = None
