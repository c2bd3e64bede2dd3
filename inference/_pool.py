"""InferencePool: model tiers, deadline-aware admission, load shedding to smaller tiers.

Runs on the node's I/O loop. Each tier has workers (backends), slots (the
sum of their capacities), a bounded queue per priority and EWMAs of its
prefill and per-token times. A request goes to its preferred tier if the
tier is up and the request would finish there before its deadline; if not,
and it may degrade, to the next smaller tier; otherwise it is answered
`Overloaded` with a `retry_after` at once. Queued work that a more important
request needs room for is shed, sheddable first. Every request gets one
answer: a result, or a typed error no later than its deadline.

Which tier takes a request is decided by `inference._admission.place` over
each tier's figures; this module carries the decision out and runs the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Final

import msgspec
from opentelemetry.trace import SpanKind, StatusCode

from actors._tracing import Tracing, within
from inference._admission import RETRY_AFTER_DIGITS, Enqueue, Refuse, Start, place
from inference._backend import Backend, Generation, prompt_text
from inference._tier import PRIORITIES, RANK, Job, OnChunk, Tier, TierSpec, TierStatistics
from messages import (
    AgentError,
    BadRequest,
    GenerateRequest,
    GenerateResult,
    InternalError,
    Metadata,
    NotFound,
    Overloaded,
    RequestTimeout,
    TokenChunk,
    Unavailable,
    Usage,
)

logger: Final = logging.getLogger("actorfleet.inference")


class PoolFull(Overloaded):
    """Raised by `submit_nowait` when no tier can start the request at once."""


class _CallerFailed(Exception):
    """Raised inside a generation when the caller's chunk callback failed."""


class PoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The pool: per-tier figures and totals."""

    tiers: list[TierStatistics]
    admissions: int
    degrades: int
    rejections: int


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
        self._tiers = [Tier(spec) for spec in tiers]
        self._by_name = {t.name: i for i, t in enumerate(self._tiers)}
        self.default_tier = default_tier or self._tiers[0].name
        if self.default_tier not in self._by_name:
            msg = f"default tier {self.default_tier!r} is not one of {list(self._by_name)}"
            raise ValueError(msg)
        self.admissions = self.degrades = self.rejections = 0
        self._idle: asyncio.Event | None = None
        self._closing = False
        self.tracing: Tracing | None = None

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
        if self.tracing is None:
            return await self._submit(request, meta, on_chunk)
        span = self.tracing.start(
            f"generate {request.tier or self.default_tier}",
            kind=SpanKind.CLIENT,
            parent=meta,
            attributes={
                "gen_ai.operation.name": "text_completion",
                "gen_ai.request.max_tokens": request.max_tokens,
                "actorfleet.tier.requested": request.tier or self.default_tier,
            },
        )
        try:
            result = await self._submit(request, within(meta, span), on_chunk)
        except BaseException as error:
            span.set_attribute("error.type", getattr(error, "code", type(error).__qualname__))
            span.set_status(StatusCode.ERROR)
            raise
        else:
            span.set_attributes(
                {
                    "gen_ai.system": result.backend,
                    "gen_ai.response.model": result.model,
                    "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": result.usage.completion_tokens,
                    "actorfleet.tier": result.tier,
                    "actorfleet.degraded": result.degraded,
                }
            )
            return result
        finally:
            span.end()

    async def _submit(
        self, request: GenerateRequest, meta: Metadata, on_chunk: OnChunk | None
    ) -> GenerateResult:
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

    def _new_job(self, request: GenerateRequest, meta: Metadata, on_chunk: OnChunk | None) -> Job:
        future: asyncio.Future[GenerateResult] = asyncio.get_running_loop().create_future()
        return Job(request, meta, on_chunk, future)

    def _tiers_for(self, request: GenerateRequest) -> list[Tier]:
        """The tiers `request` may go to: its own, then the smaller ones if it may degrade."""
        name = request.tier or self.default_tier
        index = self._by_name.get(name)
        if index is None:
            msg = f"no tier named {name!r}; tiers: {', '.join(self._by_name)}"
            raise NotFound(msg)
        return self._tiers[index:] if request.may_degrade else [self._tiers[index]]

    def _admit(self, job: Job, *, start_only: bool) -> None:
        if self._closing:
            job.fail(Unavailable("the inference pool is shutting down"))
            return
        try:
            tiers = self._tiers_for(job.request)
            self._validate(job, tiers[0])
        except AgentError as error:
            job.fail(error)
            return
        job.preferred = tiers[0]
        self._place(job, tiers, start_only=start_only)

    def _place(self, job: Job, tiers: Sequence[Tier], *, start_only: bool) -> None:
        """Start, queue or refuse `job` on the first of `tiers` that can answer in time."""
        remaining = job.meta.deadline - time.time()
        if remaining <= 0:
            job.fail(RequestTimeout("deadline passed before the pool could place the request"))
            return
        candidates = [tier.candidate(job) for tier in tiers]
        match place(candidates, remaining=remaining, start_only=start_only):
            case Start(tier=index):
                tier = tiers[index]
                job.degraded = tier is not job.preferred
                worker = tier.free_worker()
                # The decision saw a free slot and a breaker that lets a request
                # in; `allow` takes the probe slot of a half-open one.
                if worker is None or not tier.breaker.allow():
                    self._refuse(job, remaining, None, start_only=start_only)
                    return
                self._count_admission(job, tier)
                self._start(job, tier, worker, probe=tier.breaker.probing)
            case Enqueue(tier=index, patience=patience, shed=shed):
                tier = tiers[index]
                job.degraded = tier is not job.preferred
                if shed:
                    self._shed_for(job, tier)
                self._count_admission(job, tier)
                self._enqueue(job, tier, patience)
            case Refuse(retry_after=retry_after):
                self._refuse(job, remaining, retry_after, start_only=start_only)

    def _refuse(
        self, job: Job, remaining: float, retry_after: float | None, *, start_only: bool
    ) -> None:
        self.rejections += 1
        if job.preferred is not None:
            job.preferred.rejected += 1
        error_type = PoolFull if start_only else Overloaded
        job.fail(
            error_type(f"no tier can answer within {remaining:.3f} s", retry_after=retry_after)
        )

    def _validate(self, job: Job, tier: Tier) -> None:
        prompt_text(job.request)
        if job.request.max_tokens < 1:
            msg = f"max_tokens must be at least 1, not {job.request.max_tokens}"
            raise BadRequest(msg)
        prompt_tokens = tier.prompt_tokens(job)
        if prompt_tokens + job.request.max_tokens > tier.context_length:
            msg = (
                f"{prompt_tokens} prompt tokens + max_tokens {job.request.max_tokens} exceed "
                f"the {tier.name} tier's context of {tier.context_length}"
            )
            raise BadRequest(msg)

    def _count_admission(self, job: Job, tier: Tier) -> None:
        self.admissions += 1
        tier.admitted += 1
        if job.degraded:
            self.degrades += 1
            tier.degraded_in += 1

    def _shed_for(self, job: Job, tier: Tier) -> None:
        """Make room by answering the newest less important queued job `Overloaded`."""
        for priority in reversed(PRIORITIES[RANK[job.meta.priority] + 1 :]):
            queue = tier.queues[priority]
            if queue:
                victim = queue.pop()
                self._unschedule(victim)
                tier.rejected += 1
                self.rejections += 1
                retry_after = round(tier.service_s(job), RETRY_AFTER_DIGITS)
                victim.fail(Overloaded("shed for more important work", retry_after=retry_after))
                return

    # -- queueing -------------------------------------------------------------

    def _enqueue(self, job: Job, tier: Tier, patience: float) -> None:
        job.tier = tier
        tier.queues[job.meta.priority].append(job)
        loop = asyncio.get_running_loop()
        job.timer = loop.call_later(job.meta.deadline - time.time(), self._expire, job)
        if patience != math.inf:
            # Still waiting when its patience runs out (more important work came
            # first, or a slot took longer to free), it moves down a tier.
            job.reroute = loop.call_later(patience, self._reroute, job)

    def _reroute(self, job: Job) -> None:
        job.reroute = None
        tier = job.tier
        if tier is None or job not in tier.queues[job.meta.priority]:
            return
        index = self._tiers.index(tier)
        smaller = self._tiers[index + 1 :]
        if not any(t.candidate(job).takes for t in smaller):
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

    def _expire(self, job: Job) -> None:
        tier = job.tier
        if tier is None:
            return
        queue = tier.queues[job.meta.priority]
        if job in queue:
            queue.remove(job)
            tier.timeouts += 1
            job.fail(RequestTimeout(f"no {tier.name} slot freed before the deadline"))
            self._note_idle()

    def _unschedule(self, job: Job) -> None:
        for timer in (job.timer, job.reroute):
            if timer is not None:
                timer.cancel()
        job.timer = job.reroute = None

    def _pump(self, tier: Tier) -> None:
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

    def _pump_later(self, tier: Tier) -> None:
        tier.pump_timer = None
        self._pump(tier)

    # -- running --------------------------------------------------------------

    def _start(self, job: Job, tier: Tier, worker: int, *, probe: bool) -> None:
        job.tier = tier
        job.probe = probe
        tier.busy[worker] += 1
        tier.running[job] = (time.monotonic(), tier.service_s(job))
        job.task = asyncio.ensure_future(self._run(job, tier, worker))
        job.task.add_done_callback(lambda _task: self._release(job, tier, worker, verdict=False))

    async def _run(self, job: Job, tier: Tier, worker: int) -> None:
        backend = tier.workers[worker]
        queue_s = time.monotonic() - job.queued_at
        chunks = _Chunks(job.on_chunk)
        started = time.monotonic()
        verdict = False
        try:
            async with asyncio.timeout(job.meta.deadline - time.time()):
                generation = await backend.generate(job.request, chunks.emit, meta=job.meta)
        except _CallerFailed as failed:
            # The caller's own chunk callback raised: its problem, not the worker's.
            job.fail(InternalError(f"the chunk callback failed: {failed.__cause__!r}"))
        except TimeoutError:
            tier.timeouts += 1
            tier.learn_cut(chunks.index, started, time.monotonic(), first_at=chunks.first_at)
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
        job: Job,
        tier: Tier,
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

    def _release(self, job: Job, tier: Tier, worker: int, *, verdict: bool) -> None:
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

    def _cancel(self, job: Job) -> None:
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
                await worker.aclose()

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


class _Chunks:
    """A running generation's text as chunks to its caller: how many, and when the first came."""

    def __init__(self, on_chunk: OnChunk | None) -> None:
        self.on_chunk = on_chunk
        self.index = 0
        self.first_at: float | None = None

    def emit(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        if self.on_chunk is not None:
            try:
                self.on_chunk(TokenChunk(index=self.index, text=text))
            except Exception as exc:
                raise _CallerFailed from exc
        self.index += 1
