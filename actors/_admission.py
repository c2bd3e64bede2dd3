"""Admission to the agents of one type: a bounded queue, deadlines, priorities.

Every request to a local agent passes `Admission.place`: asks through a
`TypeRef` (local callers, the HTTP edge, and requests that arrived over
NATS alike) and asks through a `LocalAgentRef`. It is the inference pool's
admission (`inference/_tier.py`) cut down to one queue per agent:

* The request goes to the live member with the fewest requests ahead of it
  (ties in round-robin order).
* Its wait there is estimated from the type's service time (an EWMA of
  handler durations; `service_time` is assumed until one is measured): the
  running handler's expected remainder plus one service time per request
  ahead, stretched by the share of the agents' time that more important
  requests (which will overtake it) are taking, from their recent arrival
  rate. A request that would wait and could not then finish before its
  deadline, with a margin of one standard deviation of that overtaking, is
  refused at once with `Overloaded`; one that would start at once is
  always let in.
* At most `max_queue` requests of the type wait (sheddable ones may fill
  only half of it). When the queue is full, a request displaces the newest
  queued one that is less important (sheddable first), which is answered
  `Overloaded`; if there is none, the request itself is refused.
* Refusals carry `retry_after`: the expected wait for a place to start.
* A request that has to wait, and whose deadline is near enough to be at
  risk (`AT_RISK`), is answered `RequestTimeout` if it is still queued when
  it could no longer finish before its deadline (its deadline less the
  service time; a timer on the runtime's timer thread), so no caller hears
  about it later than its deadline; the agent skips it.
* Members serve critical requests first, then default, then sheddable
  (`actors/_mailbox.py`).

The bound is counted without a lock: requests placed at the same instant
by several threads may exceed it by one each.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from typing import TYPE_CHECKING, Final

import msgspec

from actors._mailbox import RANK
from messages import Overloaded, Priority, RequestTimeout

if TYPE_CHECKING:
    from actors._call import Call
    from actors._directory import Member
    from actors._timers import Timers

DEFAULT_MAX_QUEUE: Final = 64
EWMA_WEIGHT: Final = 0.2
# A handler past its expected duration is not about to end: count a share of one.
OVERRUN_SHARE: Final = 0.25
SHEDDABLE_QUEUE_SHARE: Final = 0.5
# Retry-After of a refusal before any handler of the type has been timed.
UNMEASURED_RETRY_AFTER: Final = 1.0
# Arrival rates are counted over windows this long, and smoothed across them.
RATE_WINDOW_S: Final = 1.0
RATE_WEIGHT: Final = 0.5
# A queued request is watched by a timer when its deadline is less than this
# many times its expected finish away (or nothing is measured yet); one with
# more room is answered by its agent, which skips it if its deadline passed.
AT_RISK: Final = 10.0
# The least share of the agents' time a request is assumed to get, however
# busy more important requests keep them (a wait is stretched 20x at most).
LEAST_SHARE: Final = 0.05
_SHEDDABLE: Final = RANK[Priority.SHEDDABLE]


class AdmissionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One agent type's admission, now and since start.

    Attributes:
        agent_type: The type.
        max_queue: Requests of the type that may wait.
        queued: Requests waiting now, over all live local members.
        refused_full: Refused because the queue was full.
        refused_late: Refused because they could not finish before their deadline.
        displaced: Queued requests answered `overloaded` to make room.
        service_ms: The service time estimate (None: not measured nor assumed).
    """

    agent_type: str
    max_queue: int
    queued: int
    refused_full: int
    refused_late: int
    displaced: int
    service_ms: float | None


class Admission:
    """Admission for the local agents of one type (one per type per runtime).

    Args:
        agent_type: The type.
        timers: Where a queued request's deadline is watched.
        max_queue: Requests of the type that may wait (sheddable: half).
        service_time: Seconds a request is assumed to take until a handler
            has been timed; 0: no assumption (nothing is refused for its
            deadline before then).
    """

    __slots__ = (
        "_arrivals",
        "_lock",
        "_max_queue",
        "_measured",
        "_shed_bound",
        "_timers",
        "agent_type",
        "displaced",
        "refused_full",
        "refused_late",
        "service_s",
    )

    def __init__(
        self,
        agent_type: str,
        *,
        timers: Timers,
        max_queue: int = DEFAULT_MAX_QUEUE,
        service_time: float = 0.0,
    ) -> None:
        self.agent_type = agent_type
        self._timers = timers
        self._arrivals = Arrivals()
        self._lock = threading.Lock()
        self.refused_full = self.refused_late = self.displaced = 0
        self._measured = False
        self.service_s = 0.0
        self._max_queue = self._shed_bound = 0
        self.configure(max_queue=max_queue, service_time=service_time)

    def configure(self, *, max_queue: int, service_time: float = 0.0) -> None:
        """Set the bound and, until a handler is timed, the assumed service time."""
        if max_queue < 1 or service_time < 0:
            msg = f"max_queue must be >= 1 and service_time >= 0, not {max_queue}, {service_time}"
            raise ValueError(msg)
        self._max_queue = max_queue
        self._shed_bound = max(1, int(max_queue * SHEDDABLE_QUEUE_SHARE))
        if not self._measured:
            self.service_s = service_time

    @property
    def max_queue(self) -> int:
        """Requests of the type that may wait."""
        return self._max_queue

    def learn(self, seconds: float) -> None:
        """Take one handler's duration into the service time estimate."""
        if self._measured:
            self.service_s += EWMA_WEIGHT * (seconds - self.service_s)
        else:
            self.service_s = seconds
            self._measured = True

    def place(
        self, call: Call, members: tuple[Member, ...], start: int, *, admitted: bool = False
    ) -> bool | Overloaded:
        """Queue `call` with a member, or refuse it.

        `admitted`: the caller has already bounded what it hands out (the
        event consumer's flow does); the call is queued with the member
        with the fewest ahead, never refused.

        Returns:
            True once queued; False if no member was alive to take it; the
            `Overloaded` error to answer it with if it is refused.
        """
        rank = RANK[call.meta.priority]
        chosen = members[start % len(members)]
        box = chosen.mailbox
        if chosen.busy_since is None and box.idle():  # the path that does not queue
            self._arrivals.counts[rank] += 1
            return box.queue(call, rank) or _offer_elsewhere(call, members, chosen)
        chosen, ahead, total = _choose(members, start, rank)
        if admitted:
            self._arrivals.counts[rank] += 1
            return chosen.mailbox.queue(call, rank) or _offer_elsewhere(call, members, chosen)
        deadline = call.meta.deadline
        now = time.time()
        retry_after = UNMEASURED_RETRY_AFTER
        at_risk = True
        if self.service_s:
            retry_after, margin = self._estimate(chosen, ahead, rank, len(members), now)
            finish = retry_after + self.service_s + margin
            if now + finish > deadline:
                return self._refuse_late(retry_after)
            at_risk = deadline - now < AT_RISK * finish
        if total >= (self._shed_bound if rank == _SHEDDABLE else self._max_queue):
            refusal = self._make_room(rank, members, retry_after)
            if refusal is not None:
                return refusal
        if not (chosen.mailbox.queue(call, rank) or _offer_elsewhere(call, members, chosen)):
            return False
        self._arrivals.counts[rank] += 1
        if at_risk and call.reply is not None and deadline != math.inf:
            # Once it could no longer finish in time (as estimated now), it is answered.
            expire = functools.partial(self._expire, call)
            self._timers.call_later(deadline - self.service_s - now, expire)
        return True

    def _expire(self, call: Call) -> None:
        # On the timer thread: a no-op once an agent took the call (it answers it
        # itself, by its deadline) or it was answered meanwhile.
        if call.taken or call.reply is None:
            return
        message = f"still queued for {self.agent_type} when it could no longer finish in time"
        call.reply.fail(RequestTimeout(message))

    def _estimate(
        self, agent: Member, ahead: int, rank: int, members: int, now: float
    ) -> tuple[float, float]:
        """Expected seconds before a request starts on `agent`, and its uncertainty.

        The running handler is expected to end a service time after it
        began (one past that is not about to end: a share of one is
        counted), then each request ahead takes a service time. Requests
        more important than it that arrive meanwhile overtake it: at their
        recent rate they take a share of the agent's time, which stretches
        the wait, and their count varies (Poisson) by its square root, which
        is the uncertainty, in service times.
        """
        service = self.service_s
        since = agent.busy_since
        wait = ahead * service
        if since is not None:
            wait += max(service - (now - since), OVERRUN_SHARE * service)
        rate = self._arrivals.above(rank, now) / members if rank else 0.0
        if not rate:
            return wait, 0.0
        wait /= max(1.0 - rate * service, LEAST_SHARE)
        return wait, service * math.sqrt(rate * wait)

    def _refuse_late(self, wait: float) -> Overloaded:
        with self._lock:
            self.refused_late += 1
        message = f"{self.agent_type} cannot answer before the deadline (~{wait:.3f} s queued)"
        return Overloaded(message, retry_after=wait)

    def _make_room(
        self, rank: int, members: tuple[Member, ...], retry_after: float
    ) -> Overloaded | None:
        """Displace a less important queued request; the refusal if there is none."""
        victim = None
        if rank < _SHEDDABLE:
            for member in members:
                victim = member.mailbox.displace(rank)
                if victim is not None:
                    break
        if victim is None:
            with self._lock:
                self.refused_full += 1
            message = f"{self.agent_type} has {self._max_queue} requests queued"
            return Overloaded(message, retry_after=retry_after)
        with self._lock:
            self.displaced += 1
        if victim.reply is not None:
            displaced = f"{self.agent_type} made room for a more important request"
            victim.reply.fail(Overloaded(displaced, retry_after=retry_after))
        return None

    def statistics(self, members: tuple[Member, ...]) -> AdmissionStatistics:
        """The figures of the type, with `members` its live local agents."""
        return AdmissionStatistics(
            agent_type=self.agent_type,
            max_queue=self._max_queue,
            queued=sum(m.mailbox.ahead(_SHEDDABLE) for m in members),
            refused_full=self.refused_full,
            refused_late=self.refused_late,
            displaced=self.displaced,
            service_ms=self.service_s * 1e3 if self.service_s else None,
        )


class Arrivals:
    """Requests admitted per second, by priority, counted over windows.

    Counted without a lock (a count lost to a race only lowers a rate a little).
    """

    __slots__ = ("_above", "counts", "rates", "since")

    def __init__(self) -> None:
        self.counts = [0] * len(RANK)
        self.rates = [0.0] * len(RANK)
        self._above = [0.0] * len(RANK)
        self.since = time.time()

    def above(self, rank: int, now: float) -> float:
        """Requests per second more important than `rank`, as of `now`."""
        elapsed = now - self.since
        if elapsed >= RATE_WINDOW_S:
            counts, self.counts, self.since = self.counts, [0] * len(RANK), now
            self.rates = [
                rate + RATE_WEIGHT * (count / elapsed - rate)
                for rate, count in zip(self.rates, counts, strict=True)
            ]
            self._above = [sum(self.rates[:r]) for r in range(len(RANK))]
        return self._above[rank]


def _offer_elsewhere(call: Call, members: tuple[Member, ...], chosen: Member) -> bool:
    """Queue `call` with another member (`chosen` died meanwhile); False if none is alive."""
    return any(m.mailbox.offer(call) for m in members if m is not chosen)


def _choose(members: tuple[Member, ...], start: int, rank: int) -> tuple[Member, int, int]:
    """Where a request of priority `rank` goes, the requests ahead of it there, and all queued.

    The member with the fewest requests ahead (its running one counts one),
    the first in round-robin order from `start` among equals.
    """
    count = len(members)
    chosen = members[start % count]
    ahead, total = chosen.mailbox.depths(rank)
    if count == 1:
        return chosen, ahead, total
    best = ahead + (chosen.busy_since is not None)
    for i in range(1, count):
        member = members[(start + i) % count]
        mine, queued = member.mailbox.depths(rank)
        total += queued
        load = mine + (member.busy_since is not None)
        if load < best:
            chosen, ahead, best = member, mine, load
    return chosen, ahead, total
