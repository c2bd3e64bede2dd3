"""Stopping one child within its shutdown time, whatever its handle does.

OTP's supervisor, not the child, enforces a child's `shutdown`: it asks the
child to stop, waits up to that many seconds for the exit, then kills it
(`infinity` waits without a bound). The same holds here for every kind of
child: the handle's own `shutdown()` runs on a helper thread, and the
supervisor waits for the child's exit notice, not for that call.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Final

from actors import ExitReason
from supervisors._spec import ChildHandle

logger: Final = logging.getLogger("actorfleet.supervisor")

KILL_WAIT: Final = 5.0
"""Seconds to wait for a killed child's exit before giving up on it (and logging it)."""


def wait_bound(seconds: float) -> float | None:
    """`seconds` as a bound for a thread wait: None (no bound) for `math.inf`.

    A wait longer than `threading.TIMEOUT_MAX` (some 292 years) raises
    `OverflowError`, so anything longer is taken as no bound.
    """
    if math.isinf(seconds) or seconds > threading.TIMEOUT_MAX:
        return None
    return seconds


def stop_child(handle: ChildHandle, *, shutdown: float, name: str) -> None:
    """Stop a child gracefully within `shutdown` seconds, else kill it; return once it exited.

    Args:
        handle: The running child.
        shutdown: Seconds the graceful stop may take (0: kill at once;
            `math.inf`: wait for as long as it takes).
        name: The child's id, for the helper thread and the log.
    """
    exited = threading.Event()
    wake = threading.Event()  # the child exited, or its graceful stop failed

    def on_exit(_reason: ExitReason) -> None:
        exited.set()
        wake.set()

    handle.link(on_exit)
    if exited.is_set():
        return
    if shutdown > 0:
        threading.Thread(
            target=_stop_gracefully,
            args=(handle, shutdown, name, wake),
            name=f"actorfleet-stop-{name}",
            daemon=True,
        ).start()
        wake.wait(wait_bound(shutdown))
        if exited.is_set():
            return
        logger.warning("child %s did not stop within %s s; killing it", name, shutdown)
    handle.kill()
    if not exited.wait(KILL_WAIT):
        logger.error("child %s did not exit within %s s of being killed", name, KILL_WAIT)


def _stop_gracefully(
    handle: ChildHandle, shutdown: float, name: str, failed: threading.Event
) -> None:
    try:
        handle.shutdown(timeout=min(shutdown, threading.TIMEOUT_MAX))
    except Exception:
        # Handled by the supervisor, which kills the child at once.
        logger.exception("stopping child %s failed", name)
        failed.set()
