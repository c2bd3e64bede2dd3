"""InferencePool: model tiers, deadline-aware admission, load shedding to smaller tiers.

Runs on the node's I/O loop. Each tier has workers (backends), slots (the
sum of their capacities), a bounded queue per priority and EWMAs of its
prefill and per-token times. A request goes to its preferred tier if the
tier is up and the request would finish there before its deadline; if not,
and it may degrade, to the next smaller tier; otherwise it is answered
`Overloaded` with a `retry_after` at once. Queued work that a more important
request needs room for is shed, sheddable first. Every request gets one
answer: a result, or a typed error no later than its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Final

import msgspec

from inference._backend import Backend, Generation, prompt_text
from inference._breaker import Breaker, BreakerState
from messages import (
    AgentError,
    BadRequest,
    GenerateRequest,
    GenerateResult,
    InternalError,
    Metadata,
    NotFound,
    Overloaded,
    Priority,
    RequestTimeout,
    TokenChunk,
    Unavailable,
    Usage,
)

logger: Final = logging.getLogger("actorfleet.inference")

OnChunk = Callable[[TokenChunk], None]

# Highest first: the order queues are served in, and the reverse of shedding.
PRIORITIES: Final = (Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE)
_RANK: Final = {p: i for i, p in enumerate(PRIORITIES)}
EWMA_WEIGHT: Final = 0.2
OVERRUN_SHARE: Final = 0.25
SHEDDABLE_QUEUE_SHARE: Final = 0.5


class PoolFull(Overloaded):
    """Raised by `submit_nowait` when no tier can start the request at once."""


class _CallerFailed(Exception):
    """Raised inside a generation when the caller's chunk callback failed."""


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
    ewma_prefill_ms: float | None
    ewma_token_ms: float | None


class PoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The pool: per-tier figures and totals."""

    tiers: list[TierStatistics]
    admissions: int
    degrades: int
    rejections: int


class _Job:
    __slots__ = (
        "degraded",
        "future",
        "meta",
        "on_chunk",
        "preferred",
        "probe",
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
        self.tier: _Tier | None = None
        self.degraded = False
        self.queued_at = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.reroute: asyncio.TimerHandle | None = None
        self.preferred: _Tier | None = None
        self.probe = False
        self.task: asyncio.Task[None] | None = None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Tier:
    def __init__(self, spec: TierSpec) -> None:
        if not spec.workers:
            msg = f"tier {spec.name!r} has no workers"
            raise ValueError(msg)
        self.name = spec.name
        self.workers = list(spec.workers)
        self.busy = [0] * len(self.workers)
        self.slots = sum(w.capacity for w in self.workers)
        self.queue_bound = spec.queue_bound
        self.degrade_wait = spec.degrade_wait
        self.queues: dict[Priority, collections.deque[_Job]] = {
            p: collections.deque() for p in PRIORITIES
        }
        self.breaker = Breaker(threshold=spec.breaker_threshold, cooldown=spec.breaker_cooldown)
        self.ewma_prefill: float | None = None
        self.ewma_token: float | None = None
        self.ewma_tokens: float | None = None
        self.running: dict[_Job, tuple[float, float]] = {}
        self.pump_timer: asyncio.TimerHandle | None = None
        self.admitted = self.degraded_in = self.rejected = self.timeouts = self.failures = 0
        self.cancelled = 0

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

    def service_s(self, job: _Job) -> float:
        """Expected seconds to run `job` once started (0 until measured).

        Its length is expected to be the tier's recent average, as most
        generations stop well before `max_tokens`; never more than that.
        """
        prefill = self.ewma_prefill or 0.0
        tokens = min(float(job.request.max_tokens), self.ewma_tokens or 0.0)
        return prefill + (self.ewma_token or 0.0) * tokens

    def wait_s(self, job: _Job) -> float:
        """Expected seconds before `job` would start if queued now.

        Each running generation is expected to end when its expected service
        time has passed since it started; the `n`-th in line beyond the free
        slots starts when the `n`-th of those ends (a full service time later
        for each further round of slots).
        """
        ahead = sum(len(self.queues[p]) for p in PRIORITIES[: _RANK[job.meta.priority] + 1])
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

    def learn_cut(self, tokens: int, started: float, finished: float) -> None:
        """Learn from a generation cut short: its pace so far bounds the per-token time."""
        # A lower bound on the true pace, so the estimate jumps to at least it.
        sample = (finished - started) / max(tokens, 1)
        if self.ewma_token is None or sample > self.ewma_token:
            self.ewma_token = sample
        if self.ewma_tokens is None:
            self.ewma_tokens = float(max(tokens, 1))

    def learn(self, generation: Generation, started: float, finished: float) -> None:
        run = finished - started
        tokens = max(generation.completion_tokens, 1)
        token_s = max(run - generation.first_token_s, 0.0) / tokens
        self.ewma_prefill = _ewma(self.ewma_prefill, generation.first_token_s)
        self.ewma_token = _ewma(self.ewma_token, token_s)
        self.ewma_tokens = _ewma(self.ewma_tokens, float(generation.completion_tokens))

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
            ewma_prefill_ms=None if self.ewma_prefill is None else self.ewma_prefill * 1e3,
            ewma_token_ms=None if self.ewma_token is None else self.ewma_token * 1e3,
        )


def _ewma(current: float | None, sample: float) -> float:
    return sample if current is None else current + EWMA_WEIGHT * (sample - current)


class InferencePool:
    """Routes generation requests to model tiers, shedding load to smaller ones.

    Tiers are given largest first; "degrade" means moving down that list.

    Args:
        tiers: The tiers, largest first.
        default_tier: The tier of a request that names none (the first).
    """

    def __init__(self, tiers: Sequence[TierSpec], *, default_tier: str | None = None) -> None:
        if not tiers:
            msg = "an inference pool needs at least one tier"
            raise ValueError(msg)
        self._tiers = [_Tier(spec) for spec in tiers]
        self._by_name = {t.name: i for i, t in enumerate(self._tiers)}
        self.default_tier = default_tier or self._tiers[0].name
        if self.default_tier not in self._by_name:
            msg = f"default tier {self.default_tier!r} is not one of {list(self._by_name)}"
            raise ValueError(msg)
        self.admissions = self.degrades = self.rejections = 0
        self._idle: asyncio.Event | None = None
        self._closing = False

    @property
    def tier_names(self) -> list[str]:
        """Tier names, largest first."""
        return [t.name for t in self._tiers]

    # -- admission ------------------------------------------------------------

    async def submit(
        self, request: GenerateRequest, meta: Metadata, *, on_chunk: OnChunk | None = None
    ) -> GenerateResult:
        """Generate, waiting for a slot no longer than the deadline allows.

        Raises:
            BadRequest: Empty prompt, or more tokens than the model's context.
            NotFound: An unknown tier.
            Overloaded: No tier can answer in time; `retry_after` says when to try.
            RequestTimeout: The deadline passed first.
            Unavailable: The worker failed.
        """
        job = self._new_job(request, meta, on_chunk)
        self._admit(job, start_only=False)
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    def submit_nowait(
        self, request: GenerateRequest, meta: Metadata, *, on_chunk: OnChunk | None = None
    ) -> asyncio.Future[GenerateResult]:
        """Start the request at once on a free slot; return its future.

        Cancelling the future cancels the generation and frees the slot.

        Raises:
            PoolFull: If no tier can start it now.
            AgentError: If the request is bad (empty prompt, unknown tier, ...).
        """
        job = self._new_job(request, meta, on_chunk)
        self._admit(job, start_only=True)
        if job.future.done() and not job.future.cancelled():
            error = job.future.exception()
            if error is not None:
                raise error
        job.future.add_done_callback(lambda f: self._cancel(job) if f.cancelled() else None)
        return job.future

    def _new_job(self, request: GenerateRequest, meta: Metadata, on_chunk: OnChunk | None) -> _Job:
        future: asyncio.Future[GenerateResult] = asyncio.get_running_loop().create_future()
        return _Job(request, meta, on_chunk, future)

    def _candidates(self, request: GenerateRequest) -> list[_Tier]:
        name = request.tier or self.default_tier
        index = self._by_name.get(name)
        if index is None:
            msg = f"no tier named {name!r}; tiers: {', '.join(self._by_name)}"
            raise NotFound(msg)
        return self._tiers[index:] if request.may_degrade else [self._tiers[index]]

    def _admit(self, job: _Job, *, start_only: bool) -> None:
        if self._closing:
            job.fail(Unavailable("the inference pool is shutting down"))
            return
        try:
            candidates = self._candidates(job.request)
            self._validate(job, candidates[0])
        except AgentError as error:
            job.fail(error)
            return
        job.preferred = candidates[0]
        self._place(job, candidates, start_only=start_only)

    def _place(self, job: _Job, candidates: Sequence[_Tier], *, start_only: bool) -> None:
        """Start, queue or refuse `job` on the first of `candidates` that can answer in time."""
        remaining = job.meta.deadline - time.time()
        if remaining <= 0:
            job.fail(RequestTimeout("deadline passed before the pool could place the request"))
            return
        retry_after = math.inf
        for tier in candidates:
            if not tier.breaker.would_allow() or not self._fits(job, tier):
                retry_after = min(retry_after, tier.breaker.retry_after() or math.inf)
                continue
            job.degraded = tier is not job.preferred
            patience = self._patience(job, tier, candidates)
            if patience != math.inf and tier.service_s(job) > remaining:
                continue  # it would miss the deadline here; a smaller tier may not
            worker = tier.free_worker()
            # A free worker takes the request at once, unless others queue for it.
            if worker is not None and not tier.queued and tier.breaker.allow():
                self._count_admission(job, tier)
                self._start(job, tier, worker, probe=tier.breaker.probing)
                return
            wait = tier.wait_s(job)
            if tier.ewma_token is not None:  # nothing is known of a cold tier
                retry_after = min(retry_after, max(wait, tier.service_s(job)))
            if start_only or wait + tier.service_s(job) > remaining:
                continue
            if wait > patience:
                continue  # a smaller tier answers sooner than this one's queue
            if tier.queue_room(job.meta.priority) or self._shed_for(job, tier):
                self._count_admission(job, tier)
                self._enqueue(job, tier, patience)
                return
        self._refuse(job, remaining, retry_after, start_only=start_only)

    def _refuse(self, job: _Job, remaining: float, retry_after: float, *, start_only: bool) -> None:
        self.rejections += 1
        if job.preferred is not None:
            job.preferred.rejected += 1
        error_type = PoolFull if start_only else Overloaded
        job.fail(
            error_type(
                f"no tier can answer within {remaining:.3f} s",
                retry_after=None if retry_after in {math.inf, 0.0} else round(retry_after, 3),
            )
        )

    def _patience(self, job: _Job, tier: _Tier, candidates: Sequence[_Tier]) -> float:
        """How long `job` may wait for `tier` before a smaller tier should take it.

        Forever (up to its deadline) when no smaller candidate could take it now.
        """
        later = candidates[list(candidates).index(tier) + 1 :]
        if not any(t.breaker.would_allow() and self._fits(job, t) for t in later):
            return math.inf
        return tier.degrade_wait * tier.service_s(job)

    def _validate(self, job: _Job, tier: _Tier) -> None:
        prompt_text(job.request)
        if job.request.max_tokens < 1:
            msg = f"max_tokens must be at least 1, not {job.request.max_tokens}"
            raise BadRequest(msg)
        prompt_tokens = tier.workers[0].count_tokens(job.request)
        if prompt_tokens + job.request.max_tokens > tier.context_length:
            msg = (
                f"{prompt_tokens} prompt tokens + max_tokens {job.request.max_tokens} exceed "
                f"the {tier.name} tier's context of {tier.context_length}"
            )
            raise BadRequest(msg)

    def _fits(self, job: _Job, tier: _Tier) -> bool:
        prompt_tokens = tier.workers[0].count_tokens(job.request)
        return prompt_tokens + job.request.max_tokens <= tier.context_length

    def _count_admission(self, job: _Job, tier: _Tier) -> None:
        self.admissions += 1
        tier.admitted += 1
        if job.degraded:
            self.degrades += 1
            tier.degraded_in += 1

    def _shed_for(self, job: _Job, tier: _Tier) -> bool:
        """Make room by answering the newest less important queued job `Overloaded`."""
        for priority in reversed(PRIORITIES):
            if _RANK[priority] <= _RANK[job.meta.priority]:
                return False
            queue = tier.queues[priority]
            if queue:
                victim = queue.pop()
                self._unschedule(victim)
                tier.rejected += 1
                self.rejections += 1
                victim.fail(
                    Overloaded(
                        "shed for more important work", retry_after=round(tier.service_s(job), 3)
                    )
                )
                return True
        return False

    # -- queueing -------------------------------------------------------------

    def _enqueue(self, job: _Job, tier: _Tier, patience: float) -> None:
        job.tier = tier
        tier.queues[job.meta.priority].append(job)
        loop = asyncio.get_running_loop()
        job.timer = loop.call_later(job.meta.deadline - time.time(), self._expire, job)
        if patience != math.inf:
            # Still waiting when its patience runs out (more important work came
            # first, or a slot took longer to free), it moves down a tier.
            job.reroute = loop.call_later(patience, self._reroute, job)

    def _reroute(self, job: _Job) -> None:
        job.reroute = None
        tier = job.tier
        if tier is None or job not in tier.queues[job.meta.priority]:
            return
        index = self._tiers.index(tier)
        smaller = self._tiers[index + 1 :]
        if not any(t.breaker.would_allow() and self._fits(job, t) for t in smaller):
            return  # nowhere better to go: it keeps its place and its deadline
        tier.queues[job.meta.priority].remove(job)
        self._unschedule(job)
        tier.admitted -= 1
        self.admissions -= 1
        if job.degraded:
            self.degrades -= 1
            tier.degraded_in -= 1
        self._place(job, smaller, start_only=False)
        self._note_idle()

    def _expire(self, job: _Job) -> None:
        tier = job.tier
        if tier is None:
            return
        queue = tier.queues[job.meta.priority]
        if job in queue:
            queue.remove(job)
            tier.timeouts += 1
            job.fail(RequestTimeout(f"no {tier.name} slot freed before the deadline"))
            self._note_idle()

    def _unschedule(self, job: _Job) -> None:
        for timer in (job.timer, job.reroute):
            if timer is not None:
                timer.cancel()
        job.timer = job.reroute = None

    def _pump(self, tier: _Tier) -> None:
        while tier.queued:
            worker = tier.free_worker()
            if worker is None:
                return
            if not tier.breaker.allow():
                # Look again when a probe may go in; queued work is not stranded.
                delay = tier.breaker.retry_after()
                if delay and tier.pump_timer is None:
                    loop = asyncio.get_running_loop()
                    tier.pump_timer = loop.call_later(delay, self._pump_later, tier)
                return
            job = next(tier.queues[p].popleft() for p in PRIORITIES if tier.queues[p])
            self._unschedule(job)
            self._start(job, tier, worker, probe=tier.breaker.probing)

    def _pump_later(self, tier: _Tier) -> None:
        tier.pump_timer = None
        self._pump(tier)

    # -- running --------------------------------------------------------------

    def _start(self, job: _Job, tier: _Tier, worker: int, *, probe: bool) -> None:
        job.tier = tier
        job.probe = probe
        tier.busy[worker] += 1
        tier.running[job] = (time.monotonic(), tier.service_s(job))
        job.task = asyncio.ensure_future(self._run(job, tier, worker))
        job.task.add_done_callback(lambda _task: self._release(job, tier, worker, verdict=False))

    async def _run(self, job: _Job, tier: _Tier, worker: int) -> None:
        backend = tier.workers[worker]
        queue_s = time.monotonic() - job.queued_at
        index = 0

        def emit(text: str) -> None:
            nonlocal index
            if job.on_chunk is not None:
                try:
                    job.on_chunk(TokenChunk(index=index, text=text))
                except Exception as exc:
                    raise _CallerFailed from exc
            index += 1

        started = time.monotonic()
        verdict = False
        try:
            async with asyncio.timeout(job.meta.deadline - time.time()):
                generation = await backend.generate(job.request, emit)
        except _CallerFailed as failed:
            # The caller's own chunk callback raised: its problem, not the worker's.
            job.fail(InternalError(f"the chunk callback failed: {failed.__cause__!r}"))
        except TimeoutError:
            tier.timeouts += 1
            tier.learn_cut(index, started, time.monotonic())
            job.fail(RequestTimeout(f"the {tier.name} tier did not finish before the deadline"))
        except asyncio.CancelledError:
            tier.cancelled += 1
            job.fail(RequestTimeout("the generation was cancelled"))
        except AgentError as error:
            verdict = True
            tier.breaker.success()
            job.fail(error)
        except Exception as exc:
            logger.exception("%s worker %d failed", tier.name, worker)
            verdict = True
            tier.failures += 1
            tier.breaker.failure()
            job.fail(Unavailable(f"the {tier.name} worker failed: {type(exc).__name__}"))
        else:
            verdict = True
            tier.breaker.success()
            self._succeed(job, tier, backend, generation, started=started, queue_s=queue_s)
        finally:
            self._release(job, tier, worker, verdict=verdict)

    def _succeed(
        self,
        job: _Job,
        tier: _Tier,
        backend: Backend,
        generation: Generation,
        *,
        started: float,
        queue_s: float,
    ) -> None:
        finished = time.monotonic()
        tier.learn(generation, started, finished)
        if job.future.done():
            return
        job.future.set_result(
            GenerateResult(
                text=generation.text,
                finish_reason=generation.finish_reason,
                usage=Usage(
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                    queue_s=queue_s,
                    prefill_s=generation.first_token_s,
                    generate_s=max(finished - started - generation.first_token_s, 0.0),
                ),
                tier=tier.name,
                model=backend.model,
                backend=backend.name,
                degraded=job.degraded,
            )
        )

    def _release(self, job: _Job, tier: _Tier, worker: int, *, verdict: bool) -> None:
        # Called when the run ends, and again when its task is done: a task
        # cancelled before its first step never runs `_run` at all.
        if job not in tier.running:
            return
        job.fail(RequestTimeout("the generation was cancelled"))
        if job.probe and not verdict:
            tier.breaker.release_probe()
        job.probe = False
        tier.busy[worker] -= 1
        del tier.running[job]
        self._pump(tier)
        self._note_idle()

    def _cancel(self, job: _Job) -> None:
        """The caller went away: drop the job from its queue, or stop its run."""
        self._unschedule(job)
        tier = job.tier
        if tier is not None and job in tier.queues[job.meta.priority]:
            tier.queues[job.meta.priority].remove(job)
            self._note_idle()
        if job.task is not None and not job.task.done():
            job.task.cancel()

    def _note_idle(self) -> None:
        """Wake `join()` waiters once nothing runs or waits (called wherever work leaves)."""
        if self._idle is not None and self._is_idle():
            self._idle.set()

    def _is_idle(self) -> bool:
        return all(t.in_flight == 0 and t.queued == 0 for t in self._tiers)

    async def join(self) -> None:
        """Wait until no generation runs or waits (for shutdown, and tests)."""
        if self._idle is None:
            self._idle = asyncio.Event()
        while not self._is_idle():
            self._idle.clear()
            await self._idle.wait()

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Retire the pool: refuse new work, fail what waits, stop what runs, close backends."""
        self._closing = True
        for tier in self._tiers:
            for queue in tier.queues.values():
                while queue:
                    job = queue.popleft()
                    self._unschedule(job)
                    job.fail(Unavailable("the inference pool is shutting down"))
            for job in list(tier.running):
                if job.task is not None:
                    job.task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.join(), grace)
        for tier in self._tiers:
            for worker in tier.workers:
                close = getattr(worker, "aclose", None)
                if close is not None:
                    await close()

    # -- health ---------------------------------------------------------------

    def tier_failed(self, name: str) -> None:
        """Count a worker failure reported from outside (its supervisor saw it die)."""
        tier = self._tiers[self._by_name[name]]
        tier.failures += 1
        tier.breaker.failure()

    def statistics(self) -> PoolStatistics:
        """Queue depths, in-flight work, admissions, degrades, rejections, breakers."""
        return PoolStatistics(
            tiers=[t.statistics() for t in self._tiers],
            admissions=self.admissions,
            degrades=self.degrades,
            rejections=self.rejections,
        )
