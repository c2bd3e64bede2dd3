"""Property: whatever the load, every request gets exactly one answer, by its deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference import InferencePool, Rule, ScriptedBackend, TierSpec
from messages import AgentError, GenerateRequest, Metadata, Priority, new_message_id

# Scheduling slack for the event loop, far above a timer's lateness and far
# below the gap a request left waiting on some other event would show.
SLACK_S = 0.25

requests = st.lists(
    st.fixed_dictionaries(
        {
            "after_ms": st.integers(0, 30),
            "timeout_ms": st.integers(1, 120),
            "priority": st.sampled_from(list(Priority)),
            "may_degrade": st.booleans(),
            "tier": st.sampled_from([None, "large", "small"]),
            "max_tokens": st.integers(1, 8),
            "cancel_after_ms": st.none() | st.integers(0, 40),
        }
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=requests,
    large_slots=st.integers(1, 3),
    queue_bound=st.integers(0, 6),
    # Up to 8 tokens x 60 ms: a slot can be held well past SLACK_S, so a
    # request left waiting for one instead of its deadline shows as late.
    token_ms=st.integers(0, 60),
)
def test_every_request_gets_one_answer_by_its_deadline(
    plan: list[dict[str, object]], large_slots: int, queue_bound: int, token_ms: int
) -> None:
    asyncio.run(_run(plan, large_slots, queue_bound, token_ms / 1000))


async def _run(
    plan: list[dict[str, object]], large_slots: int, queue_bound: int, token_s: float
) -> None:
    rules = [Rule(pattern=".", reply="one two three four five six seven eight nine")]
    pool = InferencePool(
        [
            TierSpec(
                name="large",
                workers=[ScriptedBackend(rules, token_delay=token_s, capacity=large_slots)],
                queue_bound=queue_bound,
            ),
            TierSpec(
                name="small",
                workers=[ScriptedBackend(rules, token_delay=token_s / 4, capacity=2)],
                queue_bound=queue_bound,
            ),
        ]
    )
    loop = asyncio.get_running_loop()
    late: list[float] = []

    async def one(item: dict[str, object]) -> str:
        await asyncio.sleep(int(item["after_ms"]) / 1000)  # type: ignore[call-overload]
        timeout = int(item["timeout_ms"]) / 1000  # type: ignore[call-overload]
        meta = Metadata(
            id=new_message_id(),
            deadline=time.time() + timeout,
            priority=item["priority"],  # type: ignore[arg-type]
        )
        request = GenerateRequest(
            prompt="hello",
            tier=item["tier"],  # type: ignore[arg-type]
            may_degrade=bool(item["may_degrade"]),
            max_tokens=int(item["max_tokens"]),  # type: ignore[call-overload]
        )
        answer_by = loop.time() + timeout + SLACK_S
        task = asyncio.ensure_future(pool.submit(request, meta))
        cancel_after = item["cancel_after_ms"]
        if cancel_after is not None:
            loop.call_later(int(cancel_after) / 1000, task.cancel)  # type: ignore[call-overload]
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except AgentError as error:
            outcome = error.code
        else:
            outcome = "result"
        if loop.time() > answer_by:
            late.append(loop.time() - answer_by)
        return outcome

    outcomes = await asyncio.gather(*(one(item) for item in plan))
    assert len(outcomes) == len(plan)
    assert late == []
    await asyncio.wait_for(pool.join(), 5)
    stats = pool.statistics()
    assert all(t.in_flight == 0 and t.queued == 0 for t in stats.tiers)
