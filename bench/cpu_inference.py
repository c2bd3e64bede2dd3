"""Real llama.cpp engines on the CPU: the pool vs the raw engine, grammar cost, shedding.

    python bench/cpu_inference.py [--quick]

Two random test models (tests/models.py) are built into a temporary
directory: `large` (Q8_0) and `small` (Q4_0). One node serves them as two
tiers of llamacpp worker processes (one process each, `n_threads = 1`),
reached over NATS `af.inf.<tier>` through a nats-server on a free loopback
port; the same files are also loaded into this process, driven straight
through llama-cpp-python's `Llama.create_completion(stream=True)`. Every
generation is greedy, with a fixed `max_tokens` (128; 64 with --quick) and
prompts taken in turn from a fixed list, in the same order on both paths.

1. Tokens per second and time to first token (from submission to the first
   streamed text), through the pool (`PoolClient.stream` from threads) vs
   the raw engine, at 1 and 4 concurrent requests. The engine parallelism
   is the same on both paths: one engine decoding on one thread (prompt
   batches take llama-cpp-python's default, every CPU, on both: the
   backend sets no `n_threads_batch`). At 4, the raw engine serves the four
   requests back to back and the pool's one worker process serves them
   while the others queue in the pool; tokens/s is all tokens over the wall
   time, TTFT the mean over the four from the common start. Each round (5;
   15 in a full run) runs raw and pool back to back, in alternating order;
   tokens/s and TTFT are medians over rounds, `vs raw` the median of the
   per-round ratios (the machine may be shared: pairing cancels load that
   comes and goes), and the greedy texts of both paths are compared.
   Target (printed, not asserted): `ratio_vs_raw_c1`, `ratio_vs_raw_c4 >=
   0.9` (the large model; the small one, whose tokens are 4x cheaper, is
   shown beside it).
2. Grammar cost: generations constrained to `SupportDecision`'s JSON
   Schema vs free ones, on the large model, back to back in each round on
   one prompt behind two instructions of about the same length (so that
   neither reuses the other's cached prompt): raw (a `LlamaGrammar` from
   the project's `schema_to_gbnf`) and through the pool (`output=`), which
   turns the schema into the same grammar on the worker. A constrained
   generation ends at the end of its JSON (a few dozen tokens), so its
   tokens/s carries the fixed per-request cost over fewer tokens; the
   decode ratio leaves out everything before the first token. Completion
   tokens count the end-of-sequence token on both paths.
3. Shedding with real engines: Poisson arrivals at 3x the large tier's
   capacity (1 / one large generation through the pool, measured in step
   1), each with a deadline of 1.6 large generations, the priority mix of
   bench/shedding.py, all may degrade. The same arrivals (same seed) go to
   a FIFO baseline: one queue in front of the raw large engine in this
   process, answered in arrival order, no shedding, no degrading (a caller
   stops waiting at its deadline; what is still queued when the run ends
   is dropped). Arrivals last 5 s (20 s in a full run); the FIFO's queue
   only grows, so its served share falls, and the ratio rises, with the
   length of the run. Served: a result before the deadline. Unanswered:
   neither a result nor a typed error by the deadline (+50 ms: two cores
   run both engines, nats-server, the node and the callers). The pool's
   per-tier admissions, timeouts and pace estimates over the run are shown.
   Targets: `unanswered_3x == 0`, `served_ratio_vs_fifo_3x >= 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import msgspec
import nats
from nats.aio.msg import Msg

from actors.support._messages import SupportDecision
from bench._common import median, percentile, result, table
from bridges import IoLoop, NatsServer, PoolClient, build_node
from config import decode
from inference import TierStatistics
from inference._llamacpp import LlamaCppBackend, schema_to_gbnf
from messages import (
    AgentError,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    Metadata,
    OutputSchema,
    Priority,
    Usage,
    WorkerReady,
    decoder_for,
    new_message_id,
    output_schema,
)
from supervisors import Node
from tests.models import build_model

MODELS: Final = {"large": "Q8_0", "small": "Q4_0"}
N_CTX: Final = 2048
CONCURRENCY: Final = (1, 4)
PROMPTS: Final = (
    (
        "Customer: my parcel arrived broken and the box was soaked. I would like a refund "
        "or a replacement, whichever is faster. Order 4471, shipped last Tuesday.\nAgent:"
    ),
    (
        "Customer: I was charged twice for the same invoice this month. Can you check the "
        "payments on my account and send back the extra charge?\nAgent:"
    ),
    (
        "Customer: the tracking page says delivered but nothing is at my door and the "
        "neighbours have not seen it. What can the carrier do now?\nAgent:"
    ),
    (
        "Customer: how do I change the shipping address of an order that has not left the "
        "warehouse yet? I moved last week and forgot to update it.\nAgent:"
    ),
)
WARM_UP: Final = "Customer: hello, is anyone there?\nAgent:"
# The grammar rounds' prompts: one of PROMPTS behind an instruction of about
# the same length, whose first words differ, so that neither kind reuses the
# other's cached prompt (llama-cpp-python keeps the longest common prefix).
FREE_ASK: Final = "Tell what to do with this support message, as plain text.\n"
JSON_ASK: Final = "Decide what to do with this support message, as JSON.\n"
TARGET_RATIO: Final = 0.9
DEADLINE_FACTOR: Final = 1.6  # of one large generation through the pool
LOAD: Final = 3.0
LATE_TOLERANCE_S: Final = 0.050
PRIORITY_MIX: Final = ((Priority.CRITICAL, 0.2), (Priority.DEFAULT, 0.6), (Priority.SHEDDABLE, 0.2))
WORKER_START_S: Final = 120.0
PATIENT_S: Final = 120.0  # deadline of the throughput rounds: never the limit
TARGETS: Final = {
    "ratio_vs_raw_c1": f">= {TARGET_RATIO}",
    "ratio_vs_raw_c4": f">= {TARGET_RATIO}",
    "ratio_grammar_vs_free": "(info)",
    "unanswered_3x": "== 0",
    "served_ratio_vs_fifo_3x": ">= 2",
}


class Sample(msgspec.Struct, frozen=True):
    """One round: all tokens over the wall time, mean TTFT, wall time, the texts."""

    tokens_per_s: float
    ttft_s: float
    elapsed_s: float
    tokens: int
    texts: tuple[str, ...]


class Outcome(msgspec.Struct, frozen=True):
    """One offered request: when it was answered, relative to its deadline, and how."""

    latency: float
    late: bool
    served: bool
    tier: str | None
    error: str | None
    overrun: float  # seconds past the deadline when it ended (negative: before)


# -- the raw engine -----------------------------------------------------------------


class Rotation:
    """PROMPTS in turn, never starting with the one a tier's engines served last.

    An engine keeps its last prompt cached; the same prompt again would
    skip its prefill.
    """

    def __init__(self) -> None:
        self._turn = 0
        self._last: dict[str, str] = {}

    def take(self, tier: str, count: int) -> list[str]:
        if PROMPTS[self._turn % len(PROMPTS)] == self._last.get(tier):
            self._turn += 1
        prompts = [PROMPTS[(self._turn + i) % len(PROMPTS)] for i in range(count)]
        self._turn += count
        self._last[tier] = prompts[-1]
        return prompts


def raw_generate(
    llm: Any, prompt: str, max_tokens: int, grammar: Any, start: float
) -> tuple[int, float, str, str]:
    """One streamed generation: tokens, first text (s after `start`), text, finish reason."""
    first: float | None = None
    pieces: list[str] = []
    tokens = 0
    finish = "length"
    for chunk in llm.create_completion(
        prompt, max_tokens=max_tokens, temperature=0, stream=True, grammar=grammar
    ):
        choice = chunk["choices"][0]
        if choice["text"]:
            if first is None:
                first = time.perf_counter() - start
            pieces.append(choice["text"])
            tokens += 1
        if choice["finish_reason"] is not None:
            finish = choice["finish_reason"]
    if finish == "stop":
        tokens += 1  # the end-of-sequence token, which the backend counts too
    return tokens, time.perf_counter() - start if first is None else first, "".join(pieces), finish


def raw_round(llm: Any, prompts: list[str], max_tokens: int, grammar: Any = None) -> Sample:
    """The requests back to back on one engine, all submitted at the start."""
    start = time.perf_counter()
    firsts, texts, tokens = [], [], 0
    for prompt in prompts:
        count, first, text, _finish = raw_generate(llm, prompt, max_tokens, grammar, start)
        tokens += count
        firsts.append(first)
        texts.append(text)
    elapsed = time.perf_counter() - start
    return Sample(tokens / elapsed, statistics.mean(firsts), elapsed, tokens, tuple(texts))


# -- through the pool ---------------------------------------------------------------


def pool_round(
    client: PoolClient,
    tier: str,
    prompts: list[str],
    max_tokens: int,
    output: OutputSchema | None = None,
) -> Sample:
    """The requests at once, one thread each, streamed through the node's pool client."""
    firsts: list[float] = []
    answers: list[tuple[int, str]] = [(0, "")] * len(prompts)
    failures: list[BaseException] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(index: int, prompt: str) -> None:
        request = GenerateRequest(
            prompt=prompt, max_tokens=max_tokens, tier=tier, may_degrade=False, output=output
        )
        meta = Metadata(id=new_message_id(), deadline=time.time() + PATIENT_S)
        try:
            stream = client.stream(request, meta)
            seen = False
            for _chunk in stream:
                if not seen:
                    seen = True
                    with lock:
                        firsts.append(time.perf_counter() - start)
            answer = stream.result
        except Exception as exc:  # noqa: BLE001 - reported below, after the round
            with lock:
                failures.append(exc)
            return
        answers[index] = (answer.usage.completion_tokens, answer.text)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENT_S + 5)
    elapsed = time.perf_counter() - start
    if failures or len(firsts) != len(prompts):
        msg = f"a generation through the {tier} tier failed: {failures!r}"
        raise RuntimeError(msg)
    tokens = sum(n for n, _text in answers)
    texts = tuple(text for _n, text in answers)
    return Sample(tokens / elapsed, statistics.mean(firsts), elapsed, tokens, texts)


# -- shedding -----------------------------------------------------------------------

Serve = Callable[[GenerateRequest, Metadata], GenerateResult | None]


class Fifo:
    """The baseline: one queue in front of one raw engine, answered in arrival order."""

    def __init__(self, llm: Any, model: str) -> None:
        self._llm = llm
        self._model = model
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._engine = threading.Thread(target=self._drive, name="fifo-engine")
        self._engine.start()

    def serve(self, request: GenerateRequest, meta: Metadata) -> GenerateResult | None:
        """The answer, or None when there is none by the deadline (the caller stops waiting)."""
        future: concurrent.futures.Future[GenerateResult] = concurrent.futures.Future()
        self._jobs.put((request, future))
        try:
            return future.result(timeout=max(0.0, meta.deadline - time.time()))
        except TimeoutError:
            return None

    def _drive(self) -> None:
        while (job := self._jobs.get()) is not None:
            request, future = job
            if self._closing.is_set():
                future.cancel()
                continue
            start = time.perf_counter()
            assert request.prompt is not None  # noqa: S101 - the bench sends prompts
            tokens, _first, text, finish = raw_generate(
                self._llm, request.prompt, request.max_tokens, None, start
            )
            future.set_result(
                GenerateResult(
                    text=text,
                    finish_reason=FinishReason.STOP if finish == "stop" else FinishReason.LENGTH,
                    usage=Usage(prompt_tokens=0, completion_tokens=tokens),
                    tier="large",
                    model=self._model,
                    backend="llamacpp",
                )
            )

    def close(self) -> None:
        """Drop what is still queued, finish the running generation, stop."""
        self._closing.set()
        self._jobs.put(None)
        self._engine.join(PATIENT_S)


def _priority(rng: random.Random) -> Priority:
    draw = rng.random()
    for priority, share in PRIORITY_MIX:
        if draw < share:
            return priority
        draw -= share
    return Priority.DEFAULT


def offer(
    serve: Serve, *, rate: float, seconds: float, deadline_s: float, max_tokens: int, seed: int
) -> list[Outcome]:
    """Poisson arrivals at `rate` for `seconds`, one thread per request."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one(prompt: str, priority: Priority) -> None:
        start = time.time()
        deadline = start + deadline_s
        meta = Metadata(id=new_message_id(), deadline=deadline, priority=priority)
        request = GenerateRequest(prompt=prompt, max_tokens=max_tokens, may_degrade=True)
        served, tier, error, answered = False, None, None, True
        try:
            answer = serve(request, meta)
        except AgentError as exc:
            error = type(exc).__name__
        else:
            if answer is None:
                answered = False
            else:
                tier = answer.tier
                served = time.time() <= deadline
        end = time.time()
        outcome = Outcome(
            latency=end - start,
            late=not answered or end > deadline + LATE_TOLERANCE_S,
            served=served,
            tier=tier if served else None,
            error=error,
            overrun=end - deadline,
        )
        with lock:
            outcomes.append(outcome)

    threads: list[threading.Thread] = []
    clock = 0.0
    start = time.monotonic()
    index = 0
    while clock < seconds:
        clock += rng.expovariate(rate)
        delay = start + clock - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        prompt = PROMPTS[index % len(PROMPTS)]
        thread = threading.Thread(target=one, args=(prompt, _priority(rng)), daemon=True)
        thread.start()
        threads.append(thread)
        index += 1
    limit = time.monotonic() + deadline_s + 5.0  # the pool client's hop margin, and more
    for thread in threads:
        thread.join(max(0.0, limit - time.monotonic()))
    missing = len(threads) - len(outcomes)
    gone = Outcome(
        latency=deadline_s + 5.0, late=True, served=False, tier=None, error=None, overrun=5.0
    )
    return outcomes + [gone] * missing


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    large = [o.latency for o in outcomes if o.tier == "large"]
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
    answered = [o.overrun for o in outcomes if o.served or o.error is not None]
    return {
        "offered": len(outcomes),
        "served_share": sum(o.served for o in outcomes) / len(outcomes),
        "large_share": sum(o.tier == "large" for o in outcomes) / len(outcomes),
        "small_share": sum(o.tier == "small" for o in outcomes) / len(outcomes),
        "unanswered": sum(o.late for o in outcomes),
        "large_p99_ms": percentile(large, 99) * 1e3 if large else 0.0,
        "errors": errors,
        "worst_overrun_ms": max(answered) * 1e3 if answered else 0.0,
    }


# -- the node -----------------------------------------------------------------------


class ReadyWorkers:
    """Hears `WorkerReady` on `af.inf.<tier>.ready`; start it before the workers."""

    def __init__(self, url: str, tiers: list[str]) -> None:
        self._io = IoLoop(name="bench-ready").start()
        self._seen: set[str] = set()
        self._changed = threading.Condition()
        self._nc = self._io.run(self._listen(url, tiers), timeout=10.0)

    async def _listen(self, url: str, tiers: list[str]) -> Any:
        nc = await nats.connect(url)
        for tier in tiers:
            await nc.subscribe(f"af.inf.{tier}.ready", cb=self._on_ready)
        await nc.flush()
        return nc

    async def _on_ready(self, msg: Msg) -> None:
        decoder_for(WorkerReady).decode(msg.data)
        with self._changed:
            self._seen.add(msg.subject.split(".")[-2])
            self._changed.notify_all()

    def wait(self, tiers: list[str], timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._seen >= set(tiers), timeout):
                msg = f"workers of {sorted(set(tiers) - self._seen)} not ready in {timeout} s"
                raise RuntimeError(msg)

    def close(self) -> None:
        self._io.run(self._nc.close(), timeout=10.0)
        self._io.stop()


def tier_statistics(client: PoolClient) -> dict[str, TierStatistics]:
    """The pool's tiers, read on the loop the pool runs on."""

    async def read() -> dict[str, TierStatistics]:
        return {t.name: t for t in client.pool.statistics().tiers}

    return client.io.run(read(), timeout=10.0)


def node_settings(url: str, models: dict[str, Path]) -> dict[str, Any]:
    tiers = [
        {
            "name": name,
            "process": True,
            "workers": 1,
            "backend": {
                "kind": "llamacpp",
                "model_path": str(path),
                "n_ctx": N_CTX,
                "n_threads": 1,
            },
        }
        for name, path in models.items()
    ]
    return {
        "node": {"name": f"bench-cpu-{os.getpid()}"},
        "nats": {"url": url, "embed": False},
        "inference": {"tiers": tiers},
    }


class Bench:
    """Everything one run holds: models, nats-server, node, raw engines; all closed at exit."""

    def __init__(self, quick: bool) -> None:
        self.rounds = 5 if quick else 15
        self.max_tokens = 64 if quick else 128
        self.shed_seconds = 5.0 if quick else 20.0
        self.samples: dict[tuple[str, str, int], list[Sample]] = {}
        self.shed: dict[str, dict[str, Any]] = {}
        self.deadline_s = self.rate = 0.0
        self.load: list[float] = []
        self.tiers: tuple[dict[str, TierStatistics], ...] = ()

    def run(self) -> None:
        self.load = [os.getloadavg()[0]]
        with tempfile.TemporaryDirectory(prefix="af-cpu-bench-") as tmp:
            models = {
                name: build_model(Path(tmp), size=name, quant=quant, seed=0)
                for name, quant in MODELS.items()
            }
            with NatsServer() as server:
                self.serve_and_measure(server.url, models)
        self.load.append(os.getloadavg()[0])
        self.report()

    def serve_and_measure(self, url: str, models: dict[str, Path]) -> None:
        """Start the node and the raw engines, measure, and stop them all whatever happens."""
        watch = ReadyWorkers(url, list(models))
        node: Node | None = None
        raw: dict[str, LlamaCppBackend] = {}
        try:
            node = build_node(decode(node_settings(url, models)))
            node.start()
            client = node.runtime.inference
            assert isinstance(client, PoolClient)  # noqa: S101 - a node with tiers has one
            for name, path in models.items():
                raw[name] = LlamaCppBackend(str(path), n_ctx=N_CTX, n_threads=1)
            watch.wait(list(models), WORKER_START_S)
            self.measure(client, raw)
        finally:
            for backend in raw.values():
                asyncio.run(backend.aclose())
            if node is not None:
                node.stop()
                node.run(handle_signals=False)
            watch.close()

    def measure(self, client: PoolClient, raw: dict[str, LlamaCppBackend]) -> None:
        n = self.max_tokens
        llms = {tier: backend.llm for tier, backend in raw.items()}
        for tier, llm in llms.items():  # warm-up: first generations fill caches, learn paces
            raw_round(llm, [WARM_UP], n)
            pool_round(client, tier, [WARM_UP], n)
        schema = output_schema(SupportDecision)
        grammar = _grammar(schema)
        rotation = Rotation()
        for r in range(self.rounds):
            for tier, llm in llms.items():
                for c in CONCURRENCY:
                    prompts = rotation.take(tier, c)
                    self.pair(
                        ("raw", tier, c),
                        lambda llm=llm, prompts=prompts: raw_round(llm, prompts, n),
                        lambda tier=tier, prompts=prompts: pool_round(client, tier, prompts, n),
                        r,
                    )
            prompt = PROMPTS[r % len(PROMPTS)]
            free, decide = [FREE_ASK + prompt], [JSON_ASK + prompt]
            self.pair(
                ("raw-free", "large", 1),
                lambda free=free: raw_round(llms["large"], free, n),
                lambda free=free: pool_round(client, "large", free, n),
                r,
            )
            self.pair(
                ("raw-json", "large", 1),
                lambda decide=decide: raw_round(llms["large"], decide, n, grammar),
                lambda decide=decide: pool_round(client, "large", decide, n, schema),
                r,
            )
        one_large = median([s.elapsed_s for s in self.samples["pool", "large", 1]])
        self.deadline_s = DEADLINE_FACTOR * one_large
        self.rate = LOAD / one_large
        arrivals = {
            "rate": self.rate,
            "seconds": self.shed_seconds,
            "deadline_s": self.deadline_s,
            "max_tokens": n,
            "seed": 3,
        }
        before = tier_statistics(client)
        self.shed["pool"] = summarize(offer(client.generate, **arrivals))
        self.tiers = (before, tier_statistics(client))
        fifo = Fifo(llms["large"], raw["large"].model)
        try:
            self.shed["fifo"] = summarize(offer(fifo.serve, **arrivals))
        finally:
            fifo.close()

    def pair(
        self,
        key: tuple[str, str, int],
        raw: Callable[[], Sample],
        pool: Callable[[], Sample],
        round_: int,
    ) -> None:
        """One raw and one pool round back to back, their order alternating between rounds."""
        path, tier, c = key
        runs = [(path, raw), (path.replace("raw", "pool"), pool)]
        for name, run in runs if round_ % 2 == 0 else reversed(runs):
            self.samples.setdefault((name, tier, c), []).append(run())

    def paired(
        self,
        over: tuple[str, str, int],
        under: tuple[str, str, int],
        rate: Callable[[Sample], float] = lambda s: s.tokens_per_s,
    ) -> float:
        """The median over rounds of the ratio of two runs made side by side (tokens/s)."""
        return median(
            [
                rate(a) / rate(b)
                for a, b in zip(self.samples[over], self.samples[under], strict=True)
            ]
        )

    def report(self) -> None:
        figures: dict[str, Any] = {}
        self.report_throughput(figures)
        self.report_grammar(figures)
        self.report_shedding(figures)
        print()
        print(
            table(["figure", "value", "target"], [[k, figures[k], v] for k, v in TARGETS.items()])
        )
        print(result(figures))

    def report_throughput(self, figures: dict[str, Any]) -> None:
        rows = []
        for tier in MODELS:
            for c in CONCURRENCY:
                suffix = f"c{c}" if tier == "large" else f"small_c{c}"
                ratio = self.paired(("pool", tier, c), ("raw", tier, c))
                figures[f"ratio_vs_raw_{suffix}"] = round(ratio, 3)
                for path in ("raw", "pool"):
                    got = self.samples[path, tier, c]
                    tps = median([s.tokens_per_s for s in got])
                    ttft = median([s.ttft_s for s in got]) * 1e3
                    target = f">= {TARGET_RATIO}" if path == "pool" and tier == "large" else ""
                    versus = ratio if path == "pool" else 1.0
                    rows.append([f"{tier} {MODELS[tier]}", c, path, tps, ttft, versus, target])
                    figures[f"{path}_tps_{suffix}"] = round(tps, 1)
                    figures[f"{path}_ttft_ms_{suffix}"] = round(ttft, 2)
        same = all(
            r.texts == p.texts
            for (path, tier, c), got in self.samples.items()
            if path.startswith("raw")
            for r, p in zip(got, self.samples[path.replace("raw", "pool"), tier, c], strict=True)
        )
        figures["greedy_texts_match"] = same
        figures["loadavg_start"], figures["loadavg_end"] = (round(x, 2) for x in self.load)
        print(
            f"{self.rounds} rounds of {self.max_tokens} new tokens, greedy, "
            f"n_threads=1 everywhere; CPUs: {os.cpu_count()}, load average (1 min) "
            f"{self.load[0]:.2f} at start, {self.load[1]:.2f} at end"
        )
        print(
            "raw: llama-cpp-python in this process; pool: PoolClient.stream -> node -> NATS -> "
            "one worker process per tier.\nc=4: raw serves the 4 back to back on its one engine; "
            "the pool's one worker serves them while the rest queue in the pool.\n"
            "tokens/s, TTFT: medians over rounds; vs raw: the median of per-round ratios "
            "(raw and pool back to back, order alternating).\n"
            f"Same greedy text on both paths (free and JSON): {same}"
        )
        headers = ["model", "concurrent", "path", "tokens/s", "TTFT ms", "vs raw", "target"]
        print(table(headers, rows))

    def report_grammar(self, figures: dict[str, Any]) -> None:
        print(
            "\ngrammar: SupportDecision JSON Schema vs free text, large model, c=1, one prompt "
            "a round behind two like-sized instructions\n(ratio: JSON over free tokens/s, "
            "the median of per-round ratios; decode ratio: the same after the first token)"
        )
        grammar_rows = []
        for path in ("raw", "pool"):
            free_samples = self.samples[f"{path}-free", "large", 1]
            json_samples = self.samples[f"{path}-json", "large", 1]
            free = median([s.tokens_per_s for s in free_samples])
            constrained = median([s.tokens_per_s for s in json_samples])
            free_ttft = median([s.ttft_s for s in free_samples]) * 1e3
            ttft = median([s.ttft_s for s in json_samples]) * 1e3
            tokens = median([s.tokens for s in json_samples])
            kinds = ((f"{path}-json", "large", 1), (f"{path}-free", "large", 1))
            ratio = self.paired(*kinds)
            decode = self.paired(*kinds, rate=_decode_rate)
            grammar_rows.append([path, free, constrained, free_ttft, ttft, tokens, ratio, decode])
            tail = "_raw" if path == "raw" else ""
            figures[f"ratio_grammar_vs_free{tail}"] = round(ratio, 3)
            figures[f"ratio_grammar_vs_free_decode{tail}"] = round(decode, 3)
            figures[f"{path}_tps_free"] = round(free, 1)
            figures[f"{path}_tps_json"] = round(constrained, 1)
            figures[f"{path}_ttft_ms_json"] = round(ttft, 2)
        figures["ratio_vs_raw_json"] = round(
            self.paired(("pool-json", "large", 1), ("raw-json", "large", 1)), 3
        )
        headers = ["path", "free tok/s", "JSON tok/s", "free TTFT ms", "JSON TTFT ms"]
        headers += ["JSON tokens", "ratio", "decode ratio"]
        print(table(headers, grammar_rows))

    def report_shedding(self, figures: dict[str, Any]) -> None:
        print(
            f"\nshedding: {LOAD}x the large tier's capacity ({self.rate:.2f} req/s Poisson for "
            f"{self.shed_seconds} s), deadline {self.deadline_s * 1e3:.0f} ms "
            f"({DEADLINE_FACTOR} large generations), priorities 20/60/20, all may degrade;\n"
            "fifo: one queue in front of the raw large engine, no shedding, no degrading"
        )
        shed_rows = [
            [
                name,
                int(f["offered"]),
                f["served_share"],
                f["large_share"],
                f["small_share"],
                int(f["unanswered"]),
                f["large_p99_ms"],
                f["worst_overrun_ms"] if name == "pool" else "",
                " ".join(f"{k}:{v}" for k, v in sorted(f["errors"].items())) or "-",
            ]
            for name, f in self.shed.items()
        ]
        headers = ["pool", "offered", "served", "by large", "by small", "unanswered"]
        print(table([*headers, "large p99 ms", "worst overrun ms", "typed errors"], shed_rows))
        before, after = self.tiers
        print(
            "the pool's tiers over the run: "
            + "; ".join(
                f"{name} admitted {a.admitted - b.admitted}, timeouts {a.timeouts - b.timeouts}, "
                f"rejected {a.rejected - b.rejected}, estimate prefill ms "
                f"{b.ewma_prefill_ms or 0:.1f} -> {a.ewma_prefill_ms or 0:.1f}, "
                f"ms/token {b.ewma_token_ms or 0:.2f} -> {a.ewma_token_ms or 0:.2f}"
                for name, b in before.items()
                for a in (after[name],)
            )
        )
        pool3, fifo3 = self.shed["pool"], self.shed["fifo"]
        figures["unanswered_3x"] = int(pool3["unanswered"])
        figures["served_ratio_vs_fifo_3x"] = round(
            pool3["served_share"] / max(fifo3["served_share"], 1e-9), 3
        )
        figures["served_share_3x"] = round(pool3["served_share"], 3)
        figures["small_share_3x"] = round(pool3["small_share"], 3)
        figures["large_share_3x"] = round(pool3["large_share"], 3)
        figures["fifo_served_share_3x"] = round(fifo3["served_share"], 3)
        figures["offered_3x"] = int(pool3["offered"])
        figures["deadline_ms_3x"] = round(self.deadline_s * 1e3, 1)
        figures["worst_overrun_ms_3x"] = round(pool3["worst_overrun_ms"], 1)


def _decode_rate(sample: Sample) -> float:
    """Tokens/s after the first token of a one-request round: the prefill left out."""
    return (sample.tokens - 1) / max(sample.elapsed_s - sample.ttft_s, 1e-9)


def _grammar(schema: OutputSchema) -> Any:
    from llama_cpp import LlamaGrammar  # noqa: PLC0415 - the cpu extra

    return LlamaGrammar.from_string(schema_to_gbnf(schema.json), verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    Bench(args.quick).run()


if __name__ == "__main__":
    main()
