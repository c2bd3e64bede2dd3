"""Completions from actor threads, carried onto the loop in batches.

A reply settled on an actor thread must be written by the loop. Waking the
loop once per reply (a `call_soon_threadsafe` write to its self-pipe, then a
task per publish) costs more than the reply itself under load. The outbox
queues completions in a deque and wakes the loop only when it is not
already awake; one long-lived task drains the queue, so a burst of replies
costs one wake-up and goes out in one socket write.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from bridges._loop import IoLoop

logger: Final = logging.getLogger("actorfleet.outbox")

Job = Callable[..., Awaitable[None]]


class Outbox:
    """A queue of coroutine calls, fed from any thread, run in order on the loop.

    Jobs must be quick (a publish, an ack): a job that waits on the network
    holds up the jobs behind it, so such work gets its own task instead.
    """

    def __init__(self, io: IoLoop) -> None:
        self._io = io
        self._jobs: collections.deque[tuple[Job, tuple[Any, ...]]] = collections.deque()
        self._armed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the draining task (on the loop)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())

    async def stop(self) -> None:
        """Run what is queued, then stop the task (on the loop)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._run_queued()

    def put(self, job: Job, *args: Any) -> None:
        """Queue `await job(*args)`; callable from any thread."""
        self._jobs.append((job, args))
        if not self._armed:
            # A lost race only wakes the loop once more; the flag is cleared
            # by the loop before it drains, so no job is left behind.
            self._armed = True
            self._io.call_soon(self._wake.set)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._armed = False
            await self._run_queued()

    async def _run_queued(self) -> None:
        jobs = self._jobs
        while jobs:
            job, args = jobs.popleft()
            try:
                await job(*args)
            except Exception:
                logger.exception("outbox job %s failed", getattr(job, "__name__", job))
