"""Wake-ups held back until the thread that causes them is done with a burst.

Handing a request to an agent wakes the agent's thread, and settling its
reply wakes the event loop's. A thread woken while the waker still holds
the GIL only wakes to wait for the GIL, and sleeps again: two kernel round
trips where one would do. A thread that is about to let go of the GIL
anyway can hold its wake-ups and give them all at that point:

* an event loop thread (`hold_wake_ups(loop.call_soon)`) wakes the agents
  it handed requests to once it is done with what it read from its
  sockets: a burst of requests costs each agent one wake-up, given when the
  loop is about to wait in the kernel;
* an actor thread holds the wake-ups its reply's callbacks cause only while
  it settles the reply after its handler returned (`settling`), and gives
  them before it runs its next handler or waits for its next message.

A thread that holds nothing wakes others at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

Wake = tuple[Callable[[Any], object], Any]


class _Held(threading.local):
    """What the current thread holds back (a new thread holds nothing)."""

    # Schedules the release on an event loop thread (its `call_soon`).
    schedule: Callable[[Callable[[], None]], object] | None = None
    # An actor's own thread (`serving`): only there does settling hold anything.
    actor: bool = False
    # An actor thread settling a reply holds its wake-ups until `release`.
    settling: bool = False
    wakes: list[Wake] | None = None


held: Final = _Held()
"""What the current thread holds back (read `held.settling` to skip a `release` call)."""
_held = held


def hold_wake_ups(schedule: Callable[[Callable[[], None]], object] | None) -> None:
    """Hold this thread's wake-ups until `schedule`d callbacks run (an event loop's `call_soon`).

    Call it on the loop's own thread (None: stop holding). Code on that loop
    must never block on what it woke (the I/O loop's rule); `Reply.get`
    gives what is held first all the same.
    """
    _held.schedule = schedule


def wake(callback: Callable[[Any], object], argument: Any) -> None:
    """Call `callback(argument)` now, or when this thread gives what it holds."""
    held = _held
    if held.settling:
        if held.wakes is None:
            held.wakes = [(callback, argument)]
        else:
            held.wakes.append((callback, argument))
        return
    schedule = held.schedule
    if schedule is None:
        callback(argument)
        return
    if held.wakes is None:
        held.wakes = [(callback, argument)]
        try:
            schedule(release)
        except BaseException:  # the loop is closed: nothing would give them
            release()
            raise
    else:
        held.wakes.append((callback, argument))


def serving() -> None:
    """Mark this thread as an actor's own, which releases what it holds before it waits."""
    _held.actor = True


def settling() -> None:
    """Hold this thread's wake-ups from now until `release` (an actor settling a reply).

    Only on an actor's own thread (`serving`): a handler called from any
    other thread (a test, a bench) holds nothing.
    """
    held = _held
    if held.actor:
        held.settling = True


def release() -> None:
    """Give the wake-ups this thread holds, in the order they were caused."""
    held = _held
    held.settling = False
    wakes, held.wakes = held.wakes, None
    if wakes is not None:
        for callback, argument in wakes:
            callback(argument)
