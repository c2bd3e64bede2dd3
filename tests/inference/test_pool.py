"""The inference pool: admission by priority, deadline and degrade flag; shedding; breakers."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference import BreakerState, InferencePool, PoolFull, Rule, ScriptedBackend, TierSpec
from messages import (
    BadRequest,
    ChatMessage,
    FinishReason,
    GenerateRequest,
    InternalError,
    Metadata,
    NotFound,
    Overloaded,
    Priority,
    RequestTimeout,
    TokenChunk,
    Unavailable,
    new_message_id,
)


async def step() -> None:
    """One turn of the event loop: tasks just created run up to their first wait.

    Deterministic (asyncio runs ready callbacks in order), not a timed wait.
    """
    await asyncio.sleep(0)


RULES = [Rule(pattern="refund", reply="Refunds take five days.")]
TOKEN = 0.01  # seconds per scripted token


def meta(timeout: float = 5.0, priority: Priority = Priority.DEFAULT) -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + timeout, priority=priority)


def ask(text: str = "refund please", **fields: object) -> GenerateRequest:
    return GenerateRequest(prompt=text, **fields)  # type: ignore[arg-type]


def pool(
    *,
    large_capacity: int = 1,
    small_capacity: int = 1,
    queue_bound: int = 4,
    token_delay: float = TOKEN,
    large: ScriptedBackend | None = None,
) -> InferencePool:
    large = large or ScriptedBackend(
        RULES, model="big", token_delay=token_delay, capacity=large_capacity
    )
    small = ScriptedBackend(RULES, model="tiny", token_delay=0.0, capacity=small_capacity)
    return InferencePool(
        [
            TierSpec(name="large", workers=[large], queue_bound=queue_bound, breaker_cooldown=0.2),
            TierSpec(name="small", workers=[small], queue_bound=queue_bound),
        ]
    )


async def test_a_request_is_answered_by_its_preferred_tier_with_usage() -> None:
    result = await pool().submit(ask(), meta())
    assert result.text == "Refunds take five days."
    assert (result.tier, result.model, result.backend) == ("large", "big", "scripted")
    assert result.finish_reason == FinishReason.STOP
    assert result.usage.completion_tokens == 4
    assert result.usage.prompt_tokens == 2
    assert not result.degraded


async def test_max_tokens_and_stop_strings_end_a_generation() -> None:
    p = pool(token_delay=0)
    short = await p.submit(ask(max_tokens=2), meta())
    assert (short.text, short.finish_reason) == ("Refunds take ", FinishReason.LENGTH)
    stopped = await p.submit(ask(stop=[" five"]), meta())
    assert stopped.text == "Refunds take"


async def test_chunks_stream_in_order_and_add_up_to_the_text() -> None:
    chunks: list[TokenChunk] = []
    result = await pool().submit(ask(), meta(), on_chunk=chunks.append)
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert "".join(c.text for c in chunks) == result.text


async def test_bad_requests_get_typed_errors() -> None:
    p = pool()
    with pytest.raises(BadRequest, match="empty"):
        await p.submit(ask("   "), meta())
    with pytest.raises(BadRequest, match="exactly one"):
        await p.submit(GenerateRequest(), meta())
    with pytest.raises(NotFound, match="medium"):
        await p.submit(ask(tier="medium"), meta())
    with pytest.raises(BadRequest, match="context"):
        await p.submit(ask(max_tokens=5000), meta())


async def test_a_full_preferred_tier_degrades_to_the_smaller_one() -> None:
    p = pool(queue_bound=0)
    first = asyncio.ensure_future(p.submit(ask(), meta()))
    await step()  # the first takes the only large slot
    second = await p.submit(ask(), meta())
    assert (second.tier, second.degraded) == ("small", True)
    assert (await first).tier == "large"
    assert p.statistics().degrades == 1


async def test_a_request_that_may_not_degrade_is_refused_with_retry_after() -> None:
    p = pool(queue_bound=0)
    first = asyncio.ensure_future(p.submit(ask(), meta()))
    await step()
    with pytest.raises(Overloaded) as cold:
        await p.submit(ask(may_degrade=False), meta())
    # Nothing is known of the tier yet: no retry_after rather than a made-up one.
    assert cold.value.retry_after is None
    await first
    second = asyncio.ensure_future(p.submit(ask(), meta()))
    await step()
    with pytest.raises(Overloaded) as warm:
        await p.submit(ask(may_degrade=False), meta())
    assert warm.value.retry_after is not None
    assert warm.value.retry_after > 0
    await second


async def test_a_request_that_would_miss_its_deadline_waiting_degrades() -> None:
    p = pool(queue_bound=10)
    await p.submit(ask(), meta())  # teaches the large tier its speed: ~4 tokens x 10 ms
    running = [asyncio.ensure_future(p.submit(ask(), meta())) for _ in range(3)]
    await step()
    # Three large requests ahead: waiting would take ~0.08 s, the budget is 0.05 s.
    tight = await p.submit(ask(max_tokens=4), meta(timeout=0.05))
    assert tight.tier == "small"
    await asyncio.gather(*running)


async def test_queued_work_is_served_by_priority() -> None:
    p = pool(queue_bound=10)
    order: list[str] = []

    async def one(label: str, priority: Priority) -> None:
        await p.submit(ask(may_degrade=False), meta(priority=priority))
        order.append(label)

    blocker = asyncio.ensure_future(one("first", Priority.DEFAULT))
    await step()
    rest = [
        asyncio.ensure_future(one(label, priority))
        for label, priority in (
            ("sheddable", Priority.SHEDDABLE),
            ("default", Priority.DEFAULT),
            ("critical", Priority.CRITICAL),
        )
    ]
    await asyncio.gather(blocker, *rest)
    assert order == ["first", "critical", "default", "sheddable"]


async def test_sheddable_work_is_shed_first_when_the_queue_is_full() -> None:
    p = pool(queue_bound=2)
    running = asyncio.ensure_future(p.submit(ask(may_degrade=False), meta()))
    await step()
    sheddable = asyncio.ensure_future(
        p.submit(ask(may_degrade=False), meta(priority=Priority.SHEDDABLE))
    )
    default = asyncio.ensure_future(p.submit(ask(may_degrade=False), meta()))
    await step()
    # The queue (2) is full; a critical request takes the sheddable one's place.
    critical = asyncio.ensure_future(
        p.submit(ask(may_degrade=False), meta(priority=Priority.CRITICAL))
    )
    with pytest.raises(Overloaded, match="shed"):
        await sheddable
    await asyncio.gather(running, default, critical)
    # A sheddable request may use only half the queue.
    blockers = [asyncio.ensure_future(p.submit(ask(may_degrade=False), meta())) for _ in range(2)]
    await step()
    with pytest.raises(Overloaded):
        await p.submit(ask(may_degrade=False), meta(priority=Priority.SHEDDABLE))
    await asyncio.gather(*blockers)


async def test_nothing_waits_in_the_queue_past_its_deadline() -> None:
    p = pool(queue_bound=10, token_delay=0.05)
    blocker = asyncio.ensure_future(p.submit(ask(may_degrade=False), meta()))
    await step()
    with pytest.raises(RequestTimeout):
        await p.submit(ask(may_degrade=False), meta(timeout=0.03))
    # Answered at its own deadline, not when the slot it waited for freed.
    assert not blocker.done()
    await blocker
    assert p.statistics().tiers[0].timeouts == 1


async def test_a_generation_is_cut_at_its_deadline_and_frees_its_slot() -> None:
    p = pool(token_delay=0.05)
    with pytest.raises(RequestTimeout):
        await p.submit(ask(may_degrade=False), meta(timeout=0.06))
    assert p.statistics().tiers[0].in_flight == 0
    assert (await p.submit(ask(may_degrade=False), meta())).tier == "large"


async def test_a_caller_that_goes_away_frees_the_slot() -> None:
    p = pool(token_delay=0.05)
    chunks: list[TokenChunk] = []
    first = asyncio.Event()

    def on_chunk(chunk: TokenChunk) -> None:
        chunks.append(chunk)
        first.set()

    task = asyncio.ensure_future(p.submit(ask(may_degrade=False), meta(), on_chunk=on_chunk))
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(p.join(), 5)
    assert p.statistics().tiers[0].in_flight == 0
    assert len(chunks) < 4


async def test_submit_nowait_starts_at_once_or_raises_pool_full() -> None:
    p = pool()
    started = p.submit_nowait(ask(may_degrade=False), meta())
    with pytest.raises(PoolFull):
        await p.submit_nowait(ask(may_degrade=False), meta())
    assert (await started).tier == "large"


async def test_a_failing_tier_is_taken_out_and_probed_back_in() -> None:
    broken = ScriptedBackend(RULES, model="big", fail_with=RuntimeError("CUDA error"))
    p = pool(large=broken)
    for _ in range(3):
        with pytest.raises(Unavailable, match="large worker failed"):
            await p.submit(ask(may_degrade=False), meta())
    assert p.statistics().tiers[0].breaker == BreakerState.OPEN
    # While it is open, requests that may degrade go to the small tier at once.
    assert (await p.submit(ask(), meta())).tier == "small"
    with pytest.raises(Overloaded) as refused:
        await p.submit(ask(may_degrade=False), meta())
    assert refused.value.retry_after is not None
    broken.fail_with = None  # the worker recovers
    await asyncio.sleep(0.2)  # the breaker's cooldown
    assert (await p.submit(ask(may_degrade=False), meta())).tier == "large"
    stats = p.statistics().tiers[0]
    assert (stats.breaker, stats.breaker_opened, stats.failures) == (BreakerState.CLOSED, 1, 3)


async def test_a_worker_death_reported_by_its_supervisor_counts_toward_the_breaker() -> None:
    p = pool()
    for _ in range(3):
        p.tier_failed("large")
    assert p.statistics().tiers[0].breaker == BreakerState.OPEN
    assert (await p.submit(ask(), meta())).degraded


async def test_a_request_that_may_degrade_does_not_wait_long_for_its_tier() -> None:
    p = pool(queue_bound=10, token_delay=0.02)
    await p.submit(ask(), meta())  # the large tier learns it takes ~80 ms
    blocker = asyncio.ensure_future(p.submit(ask(may_degrade=False), meta()))
    await step()
    # Waiting ~80 ms is more than a quarter of the tier's service time.
    moved = await p.submit(ask(), meta())
    assert (moved.tier, moved.degraded) == ("small", True)
    # One that may not degrade waits as long as its deadline allows.
    assert (await p.submit(ask(may_degrade=False), meta())).tier == "large"
    await blocker


async def test_a_queued_request_overtaken_by_more_important_work_moves_down_a_tier() -> None:
    large = ScriptedBackend(RULES, model="big", token_delay=0.02, capacity=1)
    small = ScriptedBackend(RULES, model="tiny", capacity=1)
    p = InferencePool(
        [
            TierSpec(name="large", workers=[large], queue_bound=10, degrade_wait=1.5),
            TierSpec(name="small", workers=[small]),
        ]
    )
    await p.submit(ask(), meta())  # ~80 ms per request on the large tier
    blocker = asyncio.ensure_future(p.submit(ask(may_degrade=False), meta()))
    await step()
    patient = asyncio.ensure_future(p.submit(ask(), meta()))  # queued: ~80 ms <= 120 ms
    await step()
    assert p.statistics().tiers[0].queued == 1
    critical = [
        asyncio.ensure_future(p.submit(ask(may_degrade=False), meta(priority=Priority.CRITICAL)))
        for _ in range(2)
    ]
    result = await patient
    assert (result.tier, result.degraded) == ("small", True)
    assert [r.tier for r in await asyncio.gather(blocker, *critical)] == ["large"] * 3
    stats = p.statistics()
    assert (stats.degrades, stats.tiers[0].admitted, stats.tiers[1].degraded_in) == (1, 4, 1)


async def test_requests_queued_when_a_breaker_opens_are_served_after_its_cooldown() -> None:
    large = ScriptedBackend(RULES, model="big", capacity=1, fail_with=RuntimeError("boom"))
    p = InferencePool(
        [TierSpec(name="large", workers=[large], breaker_threshold=1, breaker_cooldown=0.05)]
    )
    failing = asyncio.ensure_future(p.submit(ask(), meta()))
    waiting = asyncio.ensure_future(p.submit(ask(), meta(timeout=3)))
    await step()
    assert p.statistics().tiers[0].queued == 1
    with pytest.raises(Unavailable):
        await failing
    large.fail_with = None  # recovered before the cooldown ends
    result = await waiting  # let in as the probe, not left to its deadline
    assert result.tier == "large"
    assert p.statistics().tiers[0].breaker == BreakerState.CLOSED


async def test_a_tier_that_slows_down_is_measured_again_from_the_runs_it_cut() -> None:
    large = ScriptedBackend(RULES, model="big", token_delay=0.002, capacity=1)
    p = pool(large=large)
    await p.submit(ask(), meta())  # learns ~2 ms a token
    large.token_delay = 0.2  # now 0.8 s a request
    with pytest.raises(RequestTimeout):
        await p.submit(ask(may_degrade=False), meta(timeout=0.2))
    # The cut run taught the pool the new pace: a request that cannot wait
    # 0.8 s goes to the small tier instead of timing out on the large one.
    moved = await p.submit(ask(), meta(timeout=0.3))
    assert moved.tier == "small"


async def test_a_slow_prefill_in_a_cut_run_is_not_charged_to_its_tokens() -> None:
    words = [Rule(pattern="refund", reply="word " * 400)]
    large = ScriptedBackend(words, model="big", prefill_delay=0.2, token_delay=0.002, capacity=1)
    p = pool(large=large)
    with pytest.raises(RequestTimeout):
        await p.submit(ask(may_degrade=False), meta(timeout=0.3))
    stats = p.statistics().tiers[0]
    assert stats.ewma_prefill_ms is not None
    assert stats.ewma_prefill_ms >= 190  # the prefill, learnt as such
    assert stats.ewma_token_ms is not None
    # ~2 ms a token, not the 0.3 s run over its ~40 tokens (7.5 ms).
    assert stats.ewma_token_ms < 5


async def test_a_failing_chunk_callback_fails_its_request_not_the_tier() -> None:
    p = pool()

    def broken(_chunk: TokenChunk) -> None:
        raise ValueError("caller bug")

    for _ in range(3):
        with pytest.raises(InternalError, match="chunk callback"):
            await p.submit(ask(may_degrade=False), meta(), on_chunk=broken)
    stats = p.statistics().tiers[0]
    assert (stats.failures, stats.breaker) == (0, BreakerState.CLOSED)


async def test_cancelling_a_submit_nowait_future_frees_the_slot() -> None:
    p = pool(token_delay=0.05)
    first = asyncio.Event()
    future = p.submit_nowait(ask(may_degrade=False), meta(), on_chunk=lambda _c: first.set())
    await asyncio.wait_for(first.wait(), 5)  # running, not merely admitted
    future.cancel()
    await asyncio.wait_for(p.join(), 5)
    assert p.statistics().tiers[0].in_flight == 0


async def test_scripted_rules_answer_chat_messages_as_they_answer_a_prompt() -> None:
    backend = ScriptedBackend([Rule(pattern=r"^refund\b", reply="Refunds take five days.")])
    chat = [
        ChatMessage(role="system", content="You are support."),
        ChatMessage(role="user", content="hello\nrefund please"),
        ChatMessage(role="assistant", content="Let me see."),
    ]
    for request in (GenerateRequest(prompt="refund please"), GenerateRequest(messages=chat)):
        assert backend.reply_for(request) == "Refunds take five days."
    other = [ChatMessage(role="user", content="where is my parcel")]
    assert backend.reply_for(GenerateRequest(messages=other)) == backend.default
