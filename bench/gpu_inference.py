"""Through the pool vs the raw exllamav2 dynamic generator, same model, same run (GPU).

    python bench/gpu_inference.py [--quick] [--model DIR]

The model is `--model`, else `AF_EXL2_MODEL_DIR`, else a tiny random Llama
built by `bench/make_test_model.py` into a temporary directory. At 1, 8 and
32 concurrent requests of the same prompt (128 new tokens each, greedy), it
measures generated tokens per second and mean time to first token: first
driving the engine's `ExLlamaV2DynamicGenerator` directly (enqueue all jobs,
`iterate()` until done), then through `InferencePool.submit` with the
exllamav2 backend over the same engine. Rounds alternate; medians are
reported. Target: `ratio_vs_raw_b1/b8/b32 >= 0.95`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

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

Sample = tuple[float, float]  # (tokens/s, mean time to first token in s)


def raw_round(engine: Engine, concurrency: int) -> Sample:
    """Drive the generator directly (the engine thread is idle meanwhile)."""
    from exllamav2.generator import ExLlamaV2DynamicJob, ExLlamaV2Sampler  # noqa: PLC0415

    generator = engine.generator
    settings = ExLlamaV2Sampler.Settings.greedy()
    start = time.perf_counter()
    first: dict[int, float] = {}
    tokens = 0
    for i in range(concurrency):
        generator.enqueue(
            ExLlamaV2DynamicJob(
                input_ids=engine.encode(PROMPT),
                max_new_tokens=NEW_TOKENS,
                gen_settings=settings,
                stop_conditions=[],
                identifier=i,
            )
        )
    while generator.num_remaining_jobs():
        for event in generator.iterate():
            if event.get("text") and event["identifier"] not in first:
                first[event["identifier"]] = time.perf_counter() - start
            if event.get("eos"):
                tokens += int(event.get("new_tokens", 0))
    elapsed = time.perf_counter() - start
    return tokens / elapsed, statistics.mean(first.values())


async def pool_round(pool: InferencePool, concurrency: int) -> Sample:
    start = time.perf_counter()
    first: list[float] = []

    async def one() -> int:
        seen = False

        def on_chunk(_chunk: Any) -> None:
            nonlocal seen
            if not seen:
                seen = True
                first.append(time.perf_counter() - start)

        meta = Metadata(id=new_message_id(), deadline=time.time() + 300)
        request = GenerateRequest(prompt=PROMPT, max_tokens=NEW_TOKENS)
        answer = await pool.submit(request, meta, on_chunk=on_chunk)
        return answer.usage.completion_tokens

    tokens = sum(await asyncio.gather(*(one() for _ in range(concurrency))))
    elapsed = time.perf_counter() - start
    return tokens / elapsed, statistics.mean(first)


def model_dir(given: str | None) -> str:
    if given or os.environ.get("AF_EXL2_MODEL_DIR"):
        return given or os.environ["AF_EXL2_MODEL_DIR"]
    import make_test_model  # noqa: PLC0415 - bench/ is on sys.path below

    out = Path(tempfile.mkdtemp(prefix="af-exl2-"))
    make_test_model.build_tokenizer(out)
    make_test_model.build_model(out)
    make_test_model.convert(out, out / "work", out / "exl2", bits=4.0)
    return str(out / "exl2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model")
    args = parser.parse_args()
    sys.path.append(str(_BENCH))
    rounds = 2 if args.quick else 5
    engine = Engine(model_dir(args.model), cache_mode="FP16")
    pool = InferencePool([TierSpec(name="gpu", workers=[ExLlamaV2Backend(engine)])])
    samples: dict[tuple[str, int], list[Sample]] = {}
    try:
        raw_round(engine, 1)  # warm-up
        for _ in range(rounds):
            for c in CONCURRENCY:
                if c > engine.capacity:
                    continue
                samples.setdefault(("raw", c), []).append(raw_round(engine, c))
                samples.setdefault(("pool", c), []).append(asyncio.run(pool_round(pool, c)))
    finally:
        engine.close()
    import torch  # noqa: PLC0415

    print(f"GPU: {torch.cuda.get_device_name(0)}; paged: {engine.paged}; {rounds} rounds")
    rows = []
    figures: dict[str, object] = {}
    for c in CONCURRENCY:
        if ("raw", c) not in samples:
            continue
        raw_tps = median([s[0] for s in samples["raw", c]])
        pool_tps = median([s[0] for s in samples["pool", c]])
        for name in ("raw", "pool"):
            tps = median([s[0] for s in samples[name, c]])
            ttft = median([s[1] for s in samples[name, c]]) * 1e3
            rows.append(
                [c, name, tps, ttft, tps / raw_tps, f">= {TARGET}" if name == "pool" else ""]
            )
        figures[f"ratio_vs_raw_b{c}"] = round(pool_tps / raw_tps, 3)
    print(table(["concurrent", "path", "tokens/s", "TTFT ms", "vs raw", "target"], rows))
    print(result(figures))


if __name__ == "__main__":
    main()
