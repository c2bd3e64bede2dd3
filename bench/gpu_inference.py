"""Through the pool vs the raw exllamav2 dynamic generator, same model, same run (GPU).

    python bench/gpu_inference.py [--quick] [--model DIR] [--concurrency 1,8,32]

The model is `--model`, else `AF_EXL2_MODEL_DIR`, else a tiny random Llama
built by `bench/make_test_model.py` into a temporary directory. One engine
(FP16 cache of 8192 tokens: 32 pages, so 32 jobs fit at once when paged)
serves both paths. At 1, 8 and 32 concurrent requests of the same prompt
(128 new tokens each, greedy, EOS a stop), it measures generated tokens per
second and mean time to first text:

* raw: the jobs the engine would build (`Engine.make_job`), enqueued at
  once on the engine's `ExLlamaV2DynamicGenerator` and iterated until done,
  on the engine's own thread between two of its steps
  (`Engine.run_exclusive`), so nothing else drives the generator meanwhile;
* pool: the same requests through `InferencePool.submit` with the exllamav2
  backend over that engine.

Without paged attention (no flash-attn) the engine's capacity is 1: both
paths then serve 8 and 32 requests one at a time (the generator queues the
raw jobs, the pool its requests), and the table says so. Rounds alternate
which path goes first; figures are medians, `vs raw` the median of the
per-round ratios. Target: `ratio_vs_raw_b1/b8/b32 >= 0.95`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

from bench._common import median, result, table
from inference import InferencePool, TierSpec
from inference._exllamav2 import Engine, ExLlamaV2Backend
from messages import GenerateRequest, Metadata, new_message_id

CONCURRENCY: Final = (1, 8, 32)
NEW_TOKENS: Final = 128
PROMPT: Final = "order refund ticket shipping carrier invoice"
TARGET: Final = 0.95
CACHE_TOKENS: Final = 8192
PATIENT_S: Final = 300.0


class Sample(NamedTuple):
    """One path in one round: all tokens over the wall time, mean time to first text."""

    tokens_per_s: float
    ttft_s: float


def bench_request() -> GenerateRequest:
    """The request both paths serve: default sampling (greedy), EOS and `NEW_TOKENS`."""
    return GenerateRequest(prompt=PROMPT, max_tokens=NEW_TOKENS)


def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else math.nan


def raw_round(engine: Engine, concurrency: int) -> Sample:
    """The generator driven directly, on the engine thread, with the engine's own jobs."""
    request = bench_request()

    def work(generator: Any) -> Sample:
        start = time.perf_counter()
        first: dict[object, float] = {}
        tokens = 0
        for i in range(concurrency):
            generator.enqueue(engine.make_job(request, f"raw-{i}"))
        while generator.num_remaining_jobs():
            for event in generator.iterate():
                ident = event.get("identifier")
                if event.get("text") and ident not in first:
                    first[ident] = time.perf_counter() - start
                if event.get("eos"):
                    tokens += int(event.get("new_tokens", 0))
        return Sample(tokens / (time.perf_counter() - start), _mean(list(first.values())))

    return engine.run_exclusive(work, timeout=PATIENT_S)


async def pool_round(pool: InferencePool, concurrency: int) -> Sample:
    """The same requests at once through the pool."""
    start = time.perf_counter()
    first: list[float] = []

    async def one() -> int:
        seen = False

        def on_chunk(_chunk: Any) -> None:
            nonlocal seen
            if not seen:
                seen = True
                first.append(time.perf_counter() - start)

        meta = Metadata(id=new_message_id(), deadline=time.time() + PATIENT_S)
        answer = await pool.submit(bench_request(), meta, on_chunk=on_chunk)
        return answer.usage.completion_tokens

    tokens = sum(await asyncio.gather(*(one() for _ in range(concurrency))))
    return Sample(tokens / (time.perf_counter() - start), _mean(first))


def serving_note(concurrency: int, capacity: int) -> str:
    """How the engine serves `concurrency` requests: batched, or some waiting their turn."""
    if concurrency <= capacity:
        return "batched" if concurrency > 1 else ""
    if capacity == 1:
        return "one at a time (capacity 1: unpaged, no flash-attn)"
    return f"{capacity} at a time (capacity {capacity})"


def summarize(
    samples: dict[tuple[str, int], list[Sample]], concurrency: Sequence[int], capacity: int
) -> tuple[list[list[object]], dict[str, object]]:
    """The table's rows and the RESULT figures."""
    rows: list[list[object]] = []
    figures: dict[str, object] = {"capacity": capacity}
    for c in concurrency:
        raw, pool = samples["raw", c], samples["pool", c]
        ratio = median([p.tokens_per_s / r.tokens_per_s for r, p in zip(raw, pool, strict=True)])
        note = serving_note(c, capacity)
        for name, runs in (("raw", raw), ("pool", pool)):
            tps = median([s.tokens_per_s for s in runs])
            ttft = median([s.ttft_s for s in runs]) * 1e3
            vs_raw = ratio if name == "pool" else 1.0
            target = f">= {TARGET}" if name == "pool" else ""
            rows.append([c, name, tps, ttft, vs_raw, target, note])
            figures[f"tokens_per_s_{name}_b{c}"] = round(tps, 1)
            figures[f"ttft_ms_{name}_b{c}"] = round(ttft, 2)
        figures[f"ratio_vs_raw_b{c}"] = round(ratio, 3)
    return rows, figures


def model_dir(given: str | None) -> str:
    if given or os.environ.get("AF_EXL2_MODEL_DIR"):
        return given or os.environ["AF_EXL2_MODEL_DIR"]
    from bench import make_test_model  # noqa: PLC0415

    out = Path(tempfile.mkdtemp(prefix="af-exl2-"))
    make_test_model.build_tokenizer(out)
    make_test_model.build_model(out)
    make_test_model.convert(out, out / "work", out / "exl2", bits=4.0)
    return str(out / "exl2")


async def measure(
    engine: Engine, rounds: int, concurrency: Sequence[int]
) -> dict[tuple[str, int], list[Sample]]:
    """Warm both paths up, then `rounds` rounds, alternating which path goes first."""
    pool = InferencePool(
        [TierSpec(name="gpu", workers=[ExLlamaV2Backend(engine)], queue_bound=max(concurrency))]
    )
    samples: dict[tuple[str, int], list[Sample]] = {}
    try:
        await asyncio.to_thread(raw_round, engine, 1)
        await pool_round(pool, 1)
        for r in range(rounds):
            for c in concurrency:
                for path in ("raw", "pool") if r % 2 == 0 else ("pool", "raw"):
                    if path == "raw":
                        sample = await asyncio.to_thread(raw_round, engine, c)
                    else:
                        sample = await pool_round(pool, c)
                    samples.setdefault((path, c), []).append(sample)
    finally:
        await pool.aclose()  # closes the engine too
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rounds = 2 if args.quick else 5
    engine = Engine(model_dir(args.model), cache_mode="FP16", max_seq_len=CACHE_TOKENS)
    samples = asyncio.run(measure(engine, rounds, concurrency))
    import torch  # noqa: PLC0415

    gpu = torch.cuda.get_device_name(0)
    print(f"GPU: {gpu}; paged: {engine.paged}; capacity: {engine.capacity}; {rounds} rounds")
    rows, figures = summarize(samples, concurrency, engine.capacity)
    figures |= {"gpu": gpu, "paged": engine.paged}
    headers = ["concurrent", "path", "tokens/s", "TTFT ms", "vs raw", "target", "served"]
    print(table(headers, rows))
    print(result(figures))


if __name__ == "__main__":
    main()
