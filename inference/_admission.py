"""Where a request goes: the pool's placement policy, as a decision over figures.

The pool describes each tier a request may go to, preferred tier first and
then the smaller ones, as a `Candidate`: what that tier would do with this
request now. `place` picks one and says what to do there, and touches
nothing: running the work (and shedding, and timers) is the pool's.

The policy: a tier that is down (its breaker open) or whose context the
request does not fit is passed over. A tier that has a free slot and no
queue starts the request at once. Otherwise it queues there if it would
finish before the deadline and its expected wait is within its patience (its
`degrade_wait` share of a service time, or the whole deadline when no
smaller tier could take it), making room by shedding less important work
when the queue is full. A tier that would miss the deadline is passed over
for a smaller one. When none is left, the request is refused with the
soonest time any tier is expected to have room.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import msgspec

RETRY_AFTER_DIGITS: Final = 3


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One tier as a request finds it now.

    Attributes:
        name: The tier.
        up: Its breaker lets a request in (closed, or half-open with no probe out).
        degrade_wait: How long a request that could go to a smaller tier
            waits for this one, as a share of `service_s`.
        retry_after: Seconds until its breaker lets a probe in (0 when closed).
        fits: The prompt plus `max_tokens` fit its context (not counted, and
            false, while it is down).
        service_s: Expected seconds to run the request once started.
        wait_s: Expected seconds before the request would start if queued now.
        measured: Whether its pace is known (nothing is known of a cold tier).
        free: A worker has a free slot and no request waits for one.
        queue_room: Its queue has room at the request's priority.
        can_shed: A less important request waits there, to be shed for this one.
    """

    name: str
    up: bool
    degrade_wait: float
    retry_after: float = 0.0
    fits: bool = True
    service_s: float = 0.0
    wait_s: float = 0.0
    measured: bool = False
    free: bool = False
    queue_room: bool = True
    can_shed: bool = False

    @property
    def takes(self) -> bool:
        """Whether it could take the request at all: up, and the request fits."""
        return self.up and self.fits


class Start(msgspec.Struct, frozen=True, kw_only=True):
    """Start the request now on a free slot of `candidates[tier]`."""

    tier: int


class Enqueue(msgspec.Struct, frozen=True, kw_only=True):
    """Queue the request on `candidates[tier]`.

    Attributes:
        tier: Its index in the candidates.
        patience: Seconds it may wait there before moving to a smaller tier
            (infinite: until its deadline).
        shed: The queue is full: shed a less important request for room.
    """

    tier: int
    patience: float
    shed: bool


class Refuse(msgspec.Struct, frozen=True, kw_only=True):
    """No tier can answer in time: answer `Overloaded` at once.

    Attributes:
        retry_after: Seconds until a tier is expected to have room; None: unknown.
    """

    retry_after: float | None


Placement = Start | Enqueue | Refuse


def place(candidates: Sequence[Candidate], *, remaining: float, start_only: bool) -> Placement:
    """Where a request with `remaining` seconds to its deadline goes.

    Args:
        candidates: The tiers it may go to, the preferred one first.
        remaining: Seconds to its deadline (more than 0).
        start_only: Only a free slot will do (`submit_nowait`): never queue.
    """
    retry_after = math.inf
    for index, tier in enumerate(candidates):
        if not tier.takes:
            retry_after = min(retry_after, tier.retry_after or math.inf)
            continue
        waits = patience(candidates, index)
        if waits != math.inf and tier.service_s > remaining:
            continue  # it would miss the deadline here; a smaller tier may not
        if tier.free:
            return Start(tier=index)
        if tier.measured:
            retry_after = min(retry_after, max(tier.wait_s, tier.service_s))
        if start_only or tier.wait_s + tier.service_s > remaining:
            continue
        if tier.wait_s > waits:
            continue  # a smaller tier answers sooner than this one's queue
        if tier.queue_room or tier.can_shed:
            return Enqueue(tier=index, patience=waits, shed=not tier.queue_room)
    if retry_after in {math.inf, 0.0}:
        return Refuse(retry_after=None)
    return Refuse(retry_after=round(retry_after, RETRY_AFTER_DIGITS))


def patience(candidates: Sequence[Candidate], index: int) -> float:
    """How long a request may wait for `candidates[index]` before a smaller tier takes it.

    Infinite (up to its deadline) when no smaller candidate could take it.
    """
    if not any(later.takes for later in candidates[index + 1 :]):
        return math.inf
    tier = candidates[index]
    return tier.degrade_wait * tier.service_s
