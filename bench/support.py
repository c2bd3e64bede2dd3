"""The support service over HTTP: what state, events and the audit log cost, same run.

    python bench/support.py [--quick]

One nats-server (JetStream) and four nodes in this process, each running the
reference service (`config/default.toml`, scripted backend with no simulated
delays, HTTP on a free port) under its own NATS prefix:

* `memory`    state in process memory, no audit log
* `kv`        state in JetStream KV, no audit log
* `kv+audit`  state in JetStream KV, audit log on (the default configuration)
* `redis+audit` state in Redis, audit log on

Each request is `POST /v1/agents/support` with a password question: two
generations, one knowledge-base search, one `KBLookupPerformed` event, a
memory read and write, and (with the audit log) two sealed records. The
`ping` endpoint of the `kv+audit` node is the baseline: the same HTTP edge
and agent hop with no work. Load comes from a separate process (16
keep-alive connections, `bench/http.py`'s client); rounds alternate
configurations; figures are medians of the per-round rates and p99s.

Reported ratios: `audit_cost` (kv+audit over kv), `kv_vs_memory`,
`redis_vs_kv` (both with audit), `support_vs_ping`.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any, Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import redis

import config
from bench._common import median, result, table
from bench.http import load_process
from bridges import NatsServer, build_node, free_port

CONCURRENCY: Final = 16
REDIS_URL: Final = "redis://127.0.0.1:6379/0"
QUESTION: Final = {"user_id": "bench", "message": "How do I reset my password?"}
PING: Final = {"payload": "x" * 64}
SETUPS: Final = {
    "memory": {"backend": "memory", "audit_stream": ""},
    "kv": {"backend": "kv", "audit_stream": ""},
    "kv+audit": {"backend": "kv"},
    "redis+audit": {"backend": "redis", "redis_url": REDIS_URL},
}


def start(name: str, nats_url: str, state: dict[str, Any]) -> tuple[Any, str]:
    raw = tomllib.loads(config.default_toml())
    tag = name.replace("+", "_")
    port = free_port()
    raw["node"]["name"] = f"bench-{tag}"
    raw["nats"].update(url=nats_url, embed=False, prefix=f"b{tag}")
    raw["http"]["port"] = port
    raw["state"].update(
        bucket=f"BENCH_{tag}",
        audit_stream=f"BENCH_AUDIT_{tag}",
        redis_prefix=f"bench-{uuid.uuid4().hex[:6]}:",
    )
    raw["state"].update(state)
    raw["events"]["stream"] = f"BENCH_EVENTS_{tag}"
    raw["events"]["dead_letter_stream"] = f"BENCH_DLQ_{tag}"
    for tier in raw["inference"]["tiers"]:
        tier["backend"].update(token_delay=0.0, prefill_delay=0.0)
    node = build_node(config.decode(raw))
    node.start()
    return node, f"http://127.0.0.1:{port}/v1/agents"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="~25 s instead of ~70 s")
    args = parser.parse_args()
    rounds, seconds = (2, 1.5) if args.quick else (4, 3.0)
    server = NatsServer().start()
    nodes: dict[str, tuple[Any, str]] = {}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*SETUPS, "ping"]}
    try:
        for name, state in SETUPS.items():
            nodes[name] = start(name, server.url, state)
        for _ in range(rounds):
            for name, (_, url) in nodes.items():
                runs[name].append(load_process(f"{url}/support", seconds, CONCURRENCY, QUESTION))
            ping = nodes["kv+audit"][1]
            runs["ping"].append(load_process(f"{ping}/ping", seconds, CONCURRENCY, PING))
    finally:
        for node, _ in nodes.values():
            node.stop()
            node.run(handle_signals=False)
        server.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match="bench-*"):
            client.delete(key)
        client.close()
    summary = {
        name: {k: median([s[k] for s in samples]) for k in ("rps", "p50_ms", "p99_ms")}
        for name, samples in runs.items()
    }
    rows = [
        [name, s["rps"], s["p50_ms"], s["p99_ms"], int(sum(r["failures"] for r in runs[name]))]
        for name, s in summary.items()
    ]
    print(f"POST /v1/agents/support, {CONCURRENCY} connections, {rounds} x {seconds} s, medians")
    print(table(["setup", "req/s", "p50 ms", "p99 ms", "non-200"], rows))
    rps = {name: s["rps"] for name, s in summary.items()}
    print(
        result(
            {
                "audit_cost": round(rps["kv+audit"] / rps["kv"], 3),
                "kv_vs_memory": round(rps["kv"] / rps["memory"], 3),
                "redis_vs_kv": round(rps["redis+audit"] / rps["kv+audit"], 3),
                "support_vs_ping": round(rps["kv+audit"] / rps["ping"], 3),
                "support_rps": round(rps["kv+audit"]),
                "support_p99_ms": round(summary["kv+audit"]["p99_ms"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
