"""A model tier of the inference pool: its workers, queues, estimates and breaker."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Annotated, Final

import msgspec

from inference._admission import Candidate
from inference._backend import Backend, Generation
from inference._breaker import Breaker, BreakerState
from messages import GenerateRequest, GenerateResult, Metadata, Priority, TokenChunk

OnChunk = Callable[[TokenChunk], None]

# Highest first: the order queues are served in, and the reverse of shedding.
PRIORITIES: Final = (Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE)
RANK: Final = {p: i for i, p in enumerate(PRIORITIES)}
EWMA_WEIGHT: Final = 0.2
OVERRUN_SHARE: Final = 0.25
SHEDDABLE_QUEUE_SHARE: Final = 0.5


class TierSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One tier: its name, its workers and how much may wait for them.

    Attributes:
        name: `large`, `small`, ...
        workers: One backend per worker.
        queue_bound: Requests that may wait for a slot (sheddable ones may
            use only half of it).
        breaker_threshold: Consecutive failures that take the tier out.
        breaker_cooldown: Seconds out before a probe request is let in.
        degrade_wait: How long, as a share of the tier's expected service time,
            a request that may degrade waits for this tier before it goes to
            a smaller one. This keeps the tier's latency flat under load; a
            request that may not degrade waits as long as its deadline allows.
    """

    name: str
    workers: list[Backend]
    queue_bound: int = 64
    degrade_wait: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    breaker_threshold: int = 3
    breaker_cooldown: float = 5.0


class TierStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One tier, now and since start."""

    name: str
    backend: str
    model: str
    slots: int
    in_flight: int
    queued: int
    admitted: int
    degraded_in: int
    rejected: int
    timeouts: int
    failures: int
    cancelled: int
    breaker: BreakerState
    breaker_opened: int
    tokens: int
    ewma_prefill_ms: float | None
    ewma_token_ms: float | None


class Job:
    """One request inside the pool, from admission to its answer."""

    __slots__ = (
        "degraded",
        "future",
        "meta",
        "on_chunk",
        "preferred",
        "probe",
        "prompt_tokens",
        "queued_at",
        "request",
        "reroute",
        "task",
        "tier",
        "timer",
    )

    def __init__(
        self,
        request: GenerateRequest,
        meta: Metadata,
        on_chunk: OnChunk | None,
        future: asyncio.Future[GenerateResult],
    ) -> None:
        self.request = request
        self.meta = meta
        self.on_chunk = on_chunk
        self.future = future
        self.tier: Tier | None = None
        self.degraded = False
        self.queued_at = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.reroute: asyncio.TimerHandle | None = None
        self.preferred: Tier | None = None
        self.probe = False
        self.prompt_tokens: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Tier:
    """A tier's live state: busy workers, queues, running jobs, EWMAs, counters."""

    def __init__(self, spec: TierSpec) -> None:
        if not spec.workers:
            msg = f"tier {spec.name!r} has no workers"
            raise ValueError(msg)
        self.name = spec.name
        self.workers = list(spec.workers)
        self.busy = [0] * len(self.workers)
        self.queue_bound = spec.queue_bound
        self.degrade_wait = spec.degrade_wait
        self.queues: dict[Priority, collections.deque[Job]] = {
            p: collections.deque() for p in PRIORITIES
        }
        self.breaker = Breaker(threshold=spec.breaker_threshold, cooldown=spec.breaker_cooldown)
        self.ewma_prefill: float | None = None
        self.ewma_token: float | None = None
        self.ewma_tokens: float | None = None
        self.running: dict[Job, tuple[float, float]] = {}
        self.pump_timer: asyncio.TimerHandle | None = None
        self.admitted = self.degraded_in = self.rejected = self.timeouts = self.failures = 0
        self.cancelled = 0
        self.tokens = 0

    @property
    def slots(self) -> int:
        """Generations the tier runs at once (a remote worker's capacity is learned)."""
        return sum(w.capacity for w in self.workers)

    @property
    def in_flight(self) -> int:
        return sum(self.busy)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    @property
    def context_length(self) -> int:
        return min(w.context_length for w in self.workers)

    def free_worker(self) -> int | None:
        for i, worker in enumerate(self.workers):
            if self.busy[i] < worker.capacity:
                return i
        return None

    def service_s(self, job: Job) -> float:
        """Expected seconds to run `job` once started (0 until measured).

        Its length is expected to be the tier's recent average, as most
        generations stop well before `max_tokens`; never more than that.
        """
        prefill = self.ewma_prefill or 0.0
        tokens = min(float(job.request.max_tokens), self.ewma_tokens or 0.0)
        return prefill + (self.ewma_token or 0.0) * tokens

    def wait_s(self, job: Job) -> float:
        """Expected seconds before `job` would start if queued now.

        Each running generation is expected to end when its expected service
        time has passed since it started; the `n`-th in line beyond the free
        slots starts when the `n`-th of those ends (a full service time later
        for each further round of slots).
        """
        ahead = sum(len(self.queues[p]) for p in PRIORITIES[: RANK[job.meta.priority] + 1])
        beyond = self.in_flight + ahead + 1 - self.slots
        if beyond <= 0:
            return 0.0
        now = time.monotonic()
        # A generation past its estimate is not about to end: count a share of one.
        ends = sorted(
            max(OVERRUN_SHARE * expected, expected - (now - started))
            for started, expected in self.running.values()
        )
        rounds, index = divmod(beyond - 1, max(len(ends), 1))
        first = ends[index] if ends else 0.0
        return first + rounds * self.service_s(job)

    def queue_room(self, priority: Priority) -> bool:
        bound = self.queue_bound
        if priority is Priority.SHEDDABLE:
            bound = int(bound * SHEDDABLE_QUEUE_SHARE)
        return self.queued < bound

    def prompt_tokens(self, job: Job) -> int:
        """Tokens of the prompt by the tier's tokenizer, counted once per job and tier.

        A real tokenizer runs on the loop; admission asks for the count of a
        tier several times, so it is remembered.
        """
        count = job.prompt_tokens.get(self.name)
        if count is None:
            count = job.prompt_tokens[self.name] = self.workers[0].count_tokens(job.request)
        return count

    def fits(self, job: Job) -> bool:
        """Whether the prompt plus `max_tokens` fit the tier's context."""
        return self.prompt_tokens(job) + job.request.max_tokens <= self.context_length

    def candidate(self, job: Job) -> Candidate:
        """The tier as `job` finds it now, for the placement decision."""
        up = self.breaker.would_allow()
        return Candidate(
            name=self.name,
            up=up,
            degrade_wait=self.degrade_wait,
            retry_after=self.breaker.retry_after(),
            fits=up and self.fits(job),
            service_s=self.service_s(job),
            wait_s=self.wait_s(job),
            measured=self.ewma_token is not None,
            free=self.free_worker() is not None and not self.queued,
            queue_room=self.queue_room(job.meta.priority),
            can_shed=any(self.queues[p] for p in PRIORITIES[RANK[job.meta.priority] + 1 :]),
        )

    def learn_cut(
        self, tokens: int, started: float, finished: float, *, first_at: float | None = None
    ) -> None:
        """Learn from a generation cut short: its pace so far bounds the per-token time.

        With two tokens or more, the pace is taken after the first one and the
        time before it bounds the prefill: a slow prefill charged to the few
        tokens that followed made the pace hundreds of times too slow, and a
        tier thought that slow is never chosen again to correct it. With
        fewer, prefill and pace cannot be told apart, and the whole time is
        charged to the tokens.
        """
        # Lower bounds on the true times, so the estimates jump to at least them.
        self.tokens += tokens
        if first_at is not None and tokens > 1:
            sample = (finished - first_at) / (tokens - 1)
            prefill = first_at - started
            if self.ewma_prefill is None or prefill > self.ewma_prefill:
                self.ewma_prefill = prefill
        else:
            sample = (finished - started) / max(tokens, 1)
        if self.ewma_token is None or sample > self.ewma_token:
            self.ewma_token = sample
        if self.ewma_tokens is None:
            self.ewma_tokens = float(max(tokens, 1))

    def learn(self, generation: Generation, started: float, finished: float) -> None:
        run = finished - started
        self.tokens += generation.completion_tokens
        tokens = max(generation.completion_tokens, 1)
        token_s = max(run - generation.first_token_s, 0.0) / tokens
        self.ewma_prefill = ewma(self.ewma_prefill, generation.first_token_s)
        self.ewma_token = ewma(self.ewma_token, token_s)
        self.ewma_tokens = ewma(self.ewma_tokens, float(generation.completion_tokens))

    def statistics(self) -> TierStatistics:
        worker = self.workers[0]
        return TierStatistics(
            name=self.name,
            backend=worker.name,
            model=worker.model,
            slots=self.slots,
            in_flight=self.in_flight,
            queued=self.queued,
            admitted=self.admitted,
            degraded_in=self.degraded_in,
            rejected=self.rejected,
            timeouts=self.timeouts,
            failures=self.failures,
            cancelled=self.cancelled,
            breaker=self.breaker.state,
            breaker_opened=self.breaker.opened,
            tokens=self.tokens,
            ewma_prefill_ms=None if self.ewma_prefill is None else self.ewma_prefill * 1e3,
            ewma_token_ms=None if self.ewma_token is None else self.ewma_token * 1e3,
        )


def ewma(current: float | None, sample: float) -> float:
    return sample if current is None else current + EWMA_WEIGHT * (sample - current)
