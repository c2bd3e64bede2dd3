"""A circuit breaker per tier: a worker that keeps failing takes its tier out."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final

DEFAULT_THRESHOLD: Final = 3
DEFAULT_COOLDOWN: Final = 5.0


class BreakerState(enum.StrEnum):
    """Whether a tier takes work."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Opens after `threshold` failures in a row; after `cooldown` lets one probe in.

    A probe that succeeds closes it; one that fails opens it again for
    another cooldown. Failures come from the tier's own generations and
    from its supervisor (a worker process that died).

    Args:
        threshold: Consecutive failures that open the breaker.
        cooldown: Seconds open before a probe is let in.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker turns half-open once its cooldown passes)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """Whether a request may go to the tier now (takes the probe slot when half-open)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    @property
    def probing(self) -> bool:
        """Whether a probe request is out (half-open)."""
        return self._probing

    def would_allow(self) -> bool:
        """Like `allow`, without taking the probe slot."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def retry_after(self) -> float:
        """Seconds until a probe may go in (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    def success(self) -> None:
        """A generation succeeded: close."""
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        """A generation or a worker failed: count it; open at the threshold."""
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            if self._opened_at is None or self._probing:
                self.opened += 1
            self._opened_at = self._clock()
            self._probing = False

    def release_probe(self) -> None:
        """A probe ended without a verdict (cancelled): let another one in."""
        self._probing = False
