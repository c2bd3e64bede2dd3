"""In-process request/reply: actorfleet vs raw pykka vs autogen-core; restart latency.

    python bench/actors.py [--quick]

All three contenders answer the same ~200-byte msgspec request from one
caller thread, one request at a time, in interleaved rounds; figures are
medians over rounds. Restart latency is measured crash -> replacement
answering its first request, each sample on a fresh supervisor with the
default policy (so each restart is a first restart, as in production).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pykka
from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    message_handler,
)

# This file's folder must not shadow the `actors` package; the repo root goes first.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

from actors import Agent, Context, Runtime, handler
from bench._common import median, percentile, result, table
from messages import ChildRestarted, InternalError, Message, encode
from supervisors import Supervisor, SupervisorSpec, agent_child


class Request(Message, frozen=True, kw_only=True):
    request_id: str
    user_id: str
    conversation_id: str
    text: str
    tags: list[str]


class Response(Message, frozen=True, kw_only=True):
    request_id: str
    ok: bool


class Crash(Message, frozen=True, kw_only=True):
    pass


PAYLOAD = Request(
    request_id="req-000001",
    user_id="user-42",
    conversation_id="conv-7f3a9c",
    text="My invoice for October shows two charges for the same seat; please refund one of them.",
    tags=["billing", "refund", "priority:normal"],
)


class EchoAgent(Agent):
    @handler
    def handle(self, msg: Request, ctx: Context) -> Response:
        return Response(request_id=msg.request_id, ok=True)

    @handler
    def crash(self, msg: Crash, ctx: Context) -> None:
        raise RuntimeError("crash requested by the benchmark")


class PykkaEcho(pykka.ThreadingActor):
    def on_receive(self, message: Request) -> Response:
        return Response(request_id=message.request_id, ok=True)


def time_calls(call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def bench_actorfleet(n: int, runtime: Runtime) -> list[float]:
    ref = EchoAgent.spawn(runtime)
    try:
        return time_calls(lambda: ref.ask(PAYLOAD), n)
    finally:
        ref.shutdown(timeout=5)


def bench_pykka(n: int) -> list[float]:
    ref = PykkaEcho.start()
    try:
        return time_calls(lambda: ref.ask(PAYLOAD), n)
    finally:
        ref.stop()


@dataclass(frozen=True, slots=True)
class AutogenRequest:
    """The same fields and values as `Request`.

    autogen-core registers only dataclass or pydantic message types (and
    JSON-serialises every message, even in process), so it gets this twin.
    """

    request_id: str
    user_id: str
    conversation_id: str
    text: str
    tags: list[str]


@dataclass(frozen=True, slots=True)
class AutogenResponse:
    request_id: str
    ok: bool


AUTOGEN_PAYLOAD = AutogenRequest(**msgspec.structs.asdict(PAYLOAD))


class AutogenEcho(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("echo")

    @message_handler
    async def handle(self, message: AutogenRequest, ctx: MessageContext) -> AutogenResponse:
        return AutogenResponse(request_id=message.request_id, ok=True)


def bench_autogen(n: int) -> list[float]:
    async def run() -> list[float]:
        rt = SingleThreadedAgentRuntime()
        await AutogenEcho.register(rt, "echo", AutogenEcho)
        rt.start()
        target = AgentId("echo", "default")
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await rt.send_message(AUTOGEN_PAYLOAD, target)
            samples.append(time.perf_counter() - start)
        await rt.stop_when_idle()
        return samples

    return asyncio.run(run())


def restart_samples(n: int, runtime: Runtime) -> list[float]:
    restarted = threading.Event()
    runtime.events.subscribe(lambda e: restarted.set() if isinstance(e, ChildRestarted) else None)
    samples = []
    for _ in range(n):
        sup = Supervisor.start(
            SupervisorSpec(name="bench", children=[agent_child(EchoAgent, runtime, id="e")]),
            runtime,
        )
        restarted.clear()
        start = time.perf_counter()
        with contextlib.suppress(InternalError):
            runtime.ref("echo").ask(Crash())
        restarted.wait(5)
        runtime.ref("echo").ask(PAYLOAD)
        samples.append(time.perf_counter() - start)
        sup.shutdown()
    return samples


def summarise(name: str, rounds: list[list[float]]) -> dict[str, float]:
    throughputs = [len(r) / sum(r) for r in rounds]
    merged = [s for r in rounds for s in r]
    return {
        "name": name,
        "throughput": median(throughputs),
        "p50_us": percentile(merged, 50) * 1e6,
        "p99_us": percentile(merged, 99) * 1e6,
    }


MODES = ("unpinned", "pinned")


def set_mode(mode: str, all_cpus: set[int]) -> None:
    """Pin (or unpin) the main thread; actor threads started afterwards inherit it."""
    os.sched_setaffinity(0, {min(all_cpus)} if mode == "pinned" else all_cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the restart bench crashes agents on purpose
    n, rounds, restarts = (2_000, 5, 200) if args.quick else (20_000, 7, 1_000)
    all_cpus = set(os.sched_getaffinity(0))

    runtime = Runtime(node="bench")
    contenders = {
        "actorfleet": lambda k: bench_actorfleet(k, runtime),
        "pykka": bench_pykka,
        "autogen-core": bench_autogen,
    }
    samples: dict[tuple[str, str], list[list[float]]] = {}
    for mode in MODES:
        set_mode(mode, all_cpus)
        for run in contenders.values():
            run(300)  # warm-up
    for _ in range(rounds):
        for mode in MODES:
            set_mode(mode, all_cpus)
            for name, run in contenders.items():
                samples.setdefault((mode, name), []).append(run(n))
    restart: dict[str, list[float]] = {}
    for mode in MODES:
        set_mode(mode, all_cpus)
        restart[mode] = restart_samples(restarts, runtime)
    set_mode("unpinned", all_cpus)
    runtime.close()

    stats = {key: summarise(key[1], r) for key, r in samples.items()}
    print(
        f"payload: {len(encode(PAYLOAD))} bytes msgpack; {rounds} interleaved rounds x {n} "
        f"asks per contender; one caller; CPUs {sorted(all_cpus)}; "
        "pinned = node on one CPU (node.cpus)"
    )
    rows = []
    for mode in MODES:
        ours = stats[(mode, "actorfleet")]["throughput"]
        for name in contenders:
            r = stats[(mode, name)]
            ratio_ = ours / r["throughput"]
            rows.append([mode, name, r["throughput"], r["p50_us"], r["p99_us"], ratio_])
    print(table(["mode", "contender", "req/s", "p50 us", "p99 us", "actorfleet ratio"], rows))
    print()
    print(
        table(
            ["restart (crash -> first reply)", "mode", "samples", "p50 ms", "p99 ms"],
            [
                [
                    "default policy",
                    mode,
                    len(restart[mode]),
                    percentile(restart[mode], 50) * 1e3,
                    percentile(restart[mode], 99) * 1e3,
                ]
                for mode in MODES
            ],
        )
    )

    def ratio(mode: str, other: str) -> float:
        ours = stats[(mode, "actorfleet")]["throughput"]
        return round(ours / stats[(mode, other)]["throughput"], 3)

    print(
        result(
            {
                "ratio_vs_pykka": ratio("unpinned", "pykka"),
                "ratio_vs_autogen": ratio("pinned", "autogen-core"),
                "ratio_vs_pykka_pinned": ratio("pinned", "pykka"),
                "ratio_vs_autogen_unpinned": ratio("unpinned", "autogen-core"),
                "actorfleet_rps_unpinned": round(stats[("unpinned", "actorfleet")]["throughput"]),
                "actorfleet_rps_pinned": round(stats[("pinned", "actorfleet")]["throughput"]),
                "restart_p50_ms": round(percentile(restart["unpinned"], 50) * 1e3, 3),
                "restart_p99_ms": round(percentile(restart["unpinned"], 99) * 1e3, 3),
                "restart_p99_ms_pinned": round(percentile(restart["pinned"], 99) * 1e3, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
