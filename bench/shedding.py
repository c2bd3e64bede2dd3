"""Load shedding: the inference pool vs a plain FIFO pool, at 0.5x to 3x of capacity.

    python bench/shedding.py [--quick]

Scripted tiers with simulated service times (no model): `large` has 4 slots
and answers in ~50 ms (10 tokens x 5 ms), `small` has 8 slots and answers in
~10 ms. Requests arrive as a Poisson process at 0.5x, 1x, 2x and 3x of the
large tier's capacity (80 req/s), each with a 0.5 s deadline and a priority
mix of 20% critical, 60% default, 20% sheddable; all may degrade. The same
arrivals (same seed) go through a FIFO pool with no shedding: one unbounded
queue in front of the large tier's 4 slots.

Per load: the share of requests served (a result, large or small) before
their deadline; requests with no answer of any kind by their deadline
(+10 ms for timer granularity); p99 latency of what the large tier served.
Targets at 3x: `unanswered_3x == 0`, `large_p99_ratio_3x <= 1.5` (vs 0.5x)
and `served_ratio_vs_fifo_3x >= 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import msgspec
import uvloop

from bench._common import percentile, result, table
from inference import InferencePool, Rule, ScriptedBackend, TierSpec
from messages import (
    AgentError,
    GenerateRequest,
    GenerateResult,
    Metadata,
    Priority,
    Usage,
    new_message_id,
)

REPLY: Final = "one two three four five six seven eight nine ten"
RULES: Final = [Rule(pattern=".", reply=REPLY)]
LARGE_SLOTS: Final = 4
LARGE_TOKEN_S: Final = 0.005
SMALL_SLOTS: Final = 8
SMALL_TOKEN_S: Final = 0.001
LARGE_CAPACITY: Final = LARGE_SLOTS / (10 * LARGE_TOKEN_S)  # req/s
DEADLINE_S: Final = 0.5
LATE_TOLERANCE_S: Final = 0.010
LOADS: Final = (0.5, 1.0, 2.0, 3.0)
PRIORITY_MIX: Final = ((Priority.CRITICAL, 0.2), (Priority.DEFAULT, 0.6), (Priority.SHEDDABLE, 0.2))
TARGETS: Final = {
    "unanswered_3x": "== 0",
    "large_p99_ratio_3x": "<= 1.5",
    "served_ratio_vs_fifo_3x": ">= 2",
}

Serve = Callable[[GenerateRequest, Metadata], Awaitable[GenerateResult]]


class Outcome(msgspec.Struct, frozen=True):
    """One request: when it was answered, relative to its deadline, and how."""

    latency: float
    late: bool
    served: bool
    tier: str | None


def large() -> ScriptedBackend:
    return ScriptedBackend(RULES, model="large", token_delay=LARGE_TOKEN_S, capacity=LARGE_SLOTS)


def small() -> ScriptedBackend:
    return ScriptedBackend(RULES, model="small", token_delay=SMALL_TOKEN_S, capacity=SMALL_SLOTS)


def shedding_pool() -> Serve:
    pool = InferencePool(
        [
            TierSpec(name="large", workers=[large()], queue_bound=64),
            TierSpec(name="small", workers=[small()], queue_bound=64),
        ]
    )
    return pool.submit


def fifo_pool() -> Serve:
    """The baseline: one unbounded queue in front of the large tier, no admission."""
    backend = large()
    slots = asyncio.Semaphore(LARGE_SLOTS)

    async def serve(request: GenerateRequest, meta: Metadata) -> GenerateResult:
        async with slots:
            generation = await backend.generate(request, lambda _text: None, meta=meta)
        return GenerateResult(
            text=generation.text,
            finish_reason=generation.finish_reason,
            usage=Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
            ),
            tier="large",
            model=backend.model,
            backend=backend.name,
        )

    return serve


def _priority(rng: random.Random) -> Priority:
    draw = rng.random()
    for priority, share in PRIORITY_MIX:
        if draw < share:
            return priority
        draw -= share
    return Priority.DEFAULT


async def one(serve: Serve, priority: Priority, outcomes: list[Outcome]) -> None:
    start = time.time()
    deadline = start + DEADLINE_S
    meta = Metadata(id=new_message_id(), deadline=deadline, priority=priority)
    served, tier = False, None
    try:
        answer = await serve(GenerateRequest(prompt="hello", max_tokens=16), meta)
    except AgentError:
        pass
    else:
        tier = answer.tier
        served = time.time() <= deadline
    end = time.time()
    outcomes.append(
        Outcome(
            latency=end - start,
            late=end > deadline + LATE_TOLERANCE_S,
            served=served,
            tier=tier if served else None,
        )
    )


async def offer(serve: Serve, rate: float, seconds: float, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    tasks = []
    clock = 0.0
    start = time.monotonic()
    while clock < seconds:
        clock += rng.expovariate(rate)
        delay = start + clock - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(serve, _priority(rng), outcomes)))
    await asyncio.gather(*tasks)
    return outcomes


def summarize(outcomes: list[Outcome]) -> dict[str, float]:
    large_latencies = [o.latency for o in outcomes if o.tier == "large"]
    return {
        "offered": len(outcomes),
        "served_share": sum(o.served for o in outcomes) / len(outcomes),
        "small_share": sum(o.tier == "small" for o in outcomes) / len(outcomes),
        "unanswered": sum(o.late for o in outcomes),
        "large_p99_ms": percentile(large_latencies, 99) * 1e3 if large_latencies else 0.0,
    }


async def run(seconds: float) -> dict[tuple[str, float], dict[str, float]]:
    figures: dict[tuple[str, float], dict[str, float]] = {}
    for i, load in enumerate(LOADS):
        rate = load * LARGE_CAPACITY
        for name, make in (("pool", shedding_pool), ("fifo", fifo_pool)):
            figures[name, load] = summarize(await offer(make(), rate, seconds, seed=i))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 1.5 if args.quick else 5.0
    figures = uvloop.run(run(seconds))
    rows = [
        [
            f"{load}x",
            name,
            int(f["offered"]),
            f["served_share"],
            f["small_share"],
            int(f["unanswered"]),
            f["large_p99_ms"],
        ]
        for load in LOADS
        for name in ("pool", "fifo")
        for f in (figures[name, load],)
    ]
    print(
        f"large tier: {LARGE_SLOTS} slots, ~{10 * LARGE_TOKEN_S * 1e3:.0f} ms; small tier: "
        f"{SMALL_SLOTS} slots, ~{10 * SMALL_TOKEN_S * 1e3:.0f} ms; deadline {DEADLINE_S} s; "
        f"{seconds} s of Poisson arrivals per load"
    )
    headers = ["load", "pool", "offered", "served", "by small", "unanswered", "large p99 ms"]
    print(table(headers, rows))
    pool3, fifo3, pool_half = figures["pool", 3.0], figures["fifo", 3.0], figures["pool", 0.5]
    figures_3x = {
        "unanswered_3x": int(pool3["unanswered"]),
        "large_p99_ratio_3x": round(pool3["large_p99_ms"] / pool_half["large_p99_ms"], 3),
        "served_ratio_vs_fifo_3x": round(
            pool3["served_share"] / max(fifo3["served_share"], 1e-9), 3
        ),
    }
    print(table(["figure", "value", "target"], [[k, v, TARGETS[k]] for k, v in figures_3x.items()]))
    print(
        result(
            {
                **figures_3x,
                "served_share_3x": round(pool3["served_share"], 3),
                "fifo_served_share_3x": round(fifo3["served_share"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
