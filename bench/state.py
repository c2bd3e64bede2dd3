"""State operations from an actor thread: memory, JetStream KV and Redis, same run.

    python bench/state.py [--quick]

Each backend answers `get`, `put` and `compare_and_set` (a claim and its
delete) called back to back from one thread, as handlers call them
(`LoopStore` hops onto the I/O loop and waits). The KV `get` is also timed
on the loop itself, without the hop, to show what the hop costs. A fresh
nats-server with JetStream; Redis on 127.0.0.1:6379. Figures are medians of
five rounds, in microseconds per operation.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

from actors import MemoryStore, StateStore
from bench._common import median, result, table
from bridges import IoLoop, NatsServer
from bridges.stores import KvStore, LoopStore, RedisStore
from config import NatsSettings, StateSettings

REDIS_URL: Final = "redis://127.0.0.1:6379/0"
VALUE: Final = b"x" * 200


def per_op(fn: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - started) / count * 1e6


def operations(store: StateStore) -> dict[str, Callable[[], object]]:
    store.put("bench.k", VALUE)

    def claim() -> None:
        store.compare_and_set("bench.c", None, VALUE)
        store.delete("bench.c")

    return {
        "get": lambda: store.get("bench.k"),
        "put": lambda: store.put("bench.k", VALUE),
        "claim+delete": claim,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="~3 s instead of ~15 s")
    args = parser.parse_args()
    count, rounds = (200, 3) if args.quick else (1000, 5)
    server = NatsServer().start()
    io = IoLoop(name="bench-state").start()
    kv = io.run(
        KvStore.open(server.url, StateSettings(backend="kv"), NatsSettings(), name="bench"),
        timeout=10,
    )
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    redis_store = io.run(
        RedisStore.open(StateSettings(backend="redis", redis_url=REDIS_URL, redis_prefix=prefix)),
        timeout=10,
    )
    stores: dict[str, StateStore] = {
        "memory": MemoryStore(),
        "kv": LoopStore(io, kv, timeout=5),
        "redis": LoopStore(io, redis_store, timeout=5),
    }
    figures: dict[str, dict[str, float]] = {}
    try:
        for name, store in stores.items():
            ops = operations(store)
            figures[name] = {
                op: median([per_op(fn, count) for _ in range(rounds)]) for op, fn in ops.items()
            }

        async def raw_gets() -> float:
            started = time.perf_counter()
            for _ in range(count):
                await kv.get("bench.k")
            return (time.perf_counter() - started) / count * 1e6

        on_loop = median([io.run(raw_gets(), timeout=60) for _ in range(rounds)])
    finally:
        io.run(redis_store.delete("bench.k"), timeout=5)
        io.run(kv.close(), timeout=5)
        io.run(redis_store.close(), timeout=5)
        io.stop()
        server.stop()
    print(f"state operations from a thread, {count} per round, medians of {rounds} rounds (µs)")
    rows = [[name, f["get"], f["put"], f["claim+delete"]] for name, f in figures.items()]
    rows.append(["kv, on the loop", on_loop, "", ""])
    print(table(["backend", "get", "put", "claim+delete"], rows))
    print(
        result(
            {
                "kv_get_us": round(figures["kv"]["get"]),
                "kv_get_on_loop_us": round(on_loop),
                "redis_get_us": round(figures["redis"]["get"]),
                "hop_share_of_kv_get": round(1 - on_loop / figures["kv"]["get"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
