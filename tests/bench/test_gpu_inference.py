"""bench/gpu_inference.py's two paths, with the stand-in generator (no GPU)."""

from __future__ import annotations

import threading
from typing import Any

from bench import gpu_inference
from bench.gpu_inference import Sample, measure, raw_round, summarize
from tests.inference.test_exllamav2_engine import FakeGenerator, FakeJob, fake_engine


class WatchedGenerator(FakeGenerator):
    """Records which threads drive it, and every job it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.given: list[FakeJob] = []

    def enqueue(self, job: FakeJob) -> None:
        self.threads.add(threading.get_ident())
        self.given.append(job)
        super().enqueue(job)

    def iterate(self) -> list[dict[str, Any]]:
        self.threads.add(threading.get_ident())
        return super().iterate()


def _work(job: FakeJob) -> dict[str, Any]:
    fields = {k: v for k, v in job.fields.items() if k not in {"identifier", "gen_settings"}}
    return {**fields, "gen_settings": vars(job.fields["gen_settings"])}


async def test_both_paths_serve_the_same_jobs_and_only_the_engine_thread_drives_it() -> None:
    generator = WatchedGenerator()
    engine = fake_engine(generator)
    samples = await measure(engine, rounds=1, concurrency=(1, 2))
    assert generator.threads == {engine._thread.ident}
    raw = [_work(j) for j in generator.given if str(j.fields["identifier"]).startswith("raw")]
    pool = [_work(j) for j in generator.given if isinstance(j.fields["identifier"], int)]
    assert len(raw) == len(pool) == 4  # the warm-up and one round of 1 and 2, on each path
    assert all(job == pool[0] for job in raw + pool)
    assert pool[0]["stop_conditions"] == [engine.tokenizer.eos_token_id]
    assert set(samples) == {("raw", 1), ("pool", 1), ("raw", 2), ("pool", 2)}


async def test_a_raw_round_counts_every_token_of_every_job() -> None:
    engine = fake_engine(FakeGenerator())
    try:
        sample = raw_round(engine, 3)
    finally:
        engine.close()
    assert sample.tokens_per_s > 0
    assert sample.ttft_s > 0


def test_with_capacity_one_the_table_says_how_many_ran_at_once() -> None:
    runs = {(path, c): [Sample(100.0, 0.01)] for path in ("raw", "pool") for c in (1, 8, 32)}
    rows, figures = summarize(runs, (1, 8, 32), capacity=1)
    assert [row[0] for row in rows] == [1, 1, 8, 8, 32, 32]
    assert all("one at a time" in str(row[-1]) for row in rows[2:])
    assert {"ratio_vs_raw_b1", "ratio_vs_raw_b8", "ratio_vs_raw_b32"} <= set(figures)
    assert gpu_inference.serving_note(32, 32) == "batched"
    assert gpu_inference.serving_note(32, 8) == "8 at a time (capacity 8)"
