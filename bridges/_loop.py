"""The node's I/O loop: one thread running asyncio (uvloop where installed)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

logger: Final = logging.getLogger("actorfleet.loop")

T = TypeVar("T")

_START_TIMEOUT: Final = 5.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop where uvloop is installed, else the default asyncio loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional, Linux-only speed-up
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new loop of the kind `new_event_loop` makes."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


class IoLoop:
    """A daemon thread that owns every socket of the node.

    Actor threads reach it only through `call_soon`, `submit` and `run`;
    the loop reaches actors by completing their `Reply` objects. Nothing on
    the loop may block on an actor.

    Args:
        name: Thread name.
    """

    def __init__(self, *, name: str = "actorfleet-io") -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether the loop thread is running."""
        return self._thread.is_alive()

    def start(self) -> IoLoop:
        """Start the loop thread and wait until it runs."""
        self._thread.start()
        self._started.wait(_START_TIMEOUT)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self._cancel_remaining()
            self.loop.close()

    def _cancel_remaining(self) -> None:
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def in_loop(self) -> bool:
        """Whether the caller runs on the loop thread."""
        return threading.current_thread() is self._thread

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback(*args)` on the loop, from any thread."""
        self.loop.call_soon_threadsafe(callback, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; return a thread-safe future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None) -> T:
        """Run `coro` on the loop and wait for its result, from another thread.

        `timeout` None (or infinite) waits as long as it takes.

        Raises:
            RuntimeError: If called on the loop thread itself (it would deadlock).
            TimeoutError: If the result does not come within `timeout`; the
                coroutine is cancelled.
        """
        if self.in_loop():
            coro.close()
            msg = "IoLoop.run() called on the loop thread"
            raise RuntimeError(msg)
        future = self.submit(coro)
        if timeout is not None and timeout >= threading.TIMEOUT_MAX:
            timeout = None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, *, timeout: float = _START_TIMEOUT) -> None:
        """Cancel what runs on the loop, stop it and join the thread."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        elif not self.loop.is_closed():
            self.loop.close()
