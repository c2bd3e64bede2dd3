"""Agent admission over HTTP: an agent pool at 0.5x to 3x of its capacity, vs no admission.

    python bench/agent_shedding.py [--quick]

One node in this process (HTTP on a free port, NATS off) serves two agent
types, each a pool of 2 agents whose handler works 20 ms (a sleep, as a
remote call would): capacity 100 req/s per type. `work` has the default
admission (`max_queue` 64, service time learned from handler durations);
`unbounded` queues every request (the mailboxes still serve by priority),
as agents did before admission. A separate process sends `POST
/v1/agents/<type>` as a Poisson process at 0.5x, 1x, 2x and 3x of capacity,
each with a 0.5 s deadline (`X-Request-Timeout`) and a priority mix of 20%
critical, 60% default, 20% sheddable; the same arrivals (same seed) go to
both types, one after the other.

Per load and type: the share answered 200 before the deadline; 429s and
how many lacked `Retry-After`; 504s (a request still queued when it could
no longer finish is answered then); answers of any kind that came after
the deadline (+20 ms for the HTTP hops), how many of those were 504s and
how long after the deadline the last answer came (negative: before it);
p99 latency of the 200s; and the share served and timed out per priority.
Critical requests alone are 0.6x of capacity, so all of them can be served.
Targets at 3x for `work`: `late_3x == 0`, `refusals_without_retry_after_3x == 0` and
`critical_served_3x >= 0.99`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import uvloop

from actors import Call
from actors._admission import Admission
from bench._common import percentile, result, table
from bench._work import SERVICE_S
from bridges import build_node, build_runtime, free_port
from config import decode

MEMBERS: Final = 2
CAPACITY: Final = MEMBERS / SERVICE_S  # req/s per type
DEADLINE_S: Final = 0.5
LATE_TOLERANCE_S: Final = 0.020
LOADS: Final = (0.5, 1.0, 2.0, 3.0)
TYPES: Final = ("work", "unbounded")
PRIORITY_MIX: Final = (("critical", 0.2), ("default", 0.6), ("sheddable", 0.2))
# More than are ever in use at once, so none is opened while measuring.
WARM_CONNECTIONS: Final = 400
TARGETS: Final = {
    "late_3x": "== 0",
    "refusals_without_retry_after_3x": "== 0",
    "critical_served_3x": ">= 0.99",
}


class Unbounded(Admission):
    """The baseline: every request is queued, round-robin, whatever its deadline."""

    __slots__ = ()

    def place(
        self, call: Call, members: tuple[Any, ...], start: int, *, admitted: bool = False
    ) -> bool:
        count = len(members)
        return any(members[(start + i) % count].mailbox.offer(call) for i in range(count))


def start_node() -> tuple[Any, str]:
    port = free_port()
    settings = decode(
        {
            "node": {"name": "bench-agent-shedding"},
            "nats": {"enabled": False},
            "http": {"enabled": True, "port": port},
            "pools": [
                {"agent": "bench._work:WorkAgent", "size": MEMBERS},
                {"agent": "bench._work:UnboundedWorkAgent", "size": MEMBERS},
            ],
        }
    )
    runtime = build_runtime(settings)
    # Before any agent or reference of the type fetches its admission.
    baseline = Unbounded("unbounded", timers=runtime.timers)
    runtime._admissions["unbounded"] = baseline  # noqa: SLF001 - the baseline
    node = build_node(settings, runtime)
    node.start()
    return node, f"127.0.0.1:{port}"


# -- the load process ---------------------------------------------------------


class Client:
    """Keep-alive HTTP/1.1 connections, one request at a time on each (opened as needed)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def warm(self, count: int) -> None:
        self.idle += await asyncio.gather(
            *(asyncio.open_connection(self.host, self.port) for _ in range(count))
        )

    async def send(self, request: bytes) -> tuple[int, dict[bytes, bytes]]:
        reader, writer = self.idle.pop() if self.idle else await self._open()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
        self.idle.append((reader, writer))
        return int(lines[0].split()[1]), headers

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


def _request(host: str, path: str, priority: str) -> bytes:
    body = b'{"payload": "x"}'
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Request-Timeout: {DEADLINE_S}\r\nX-Priority: {priority}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _priority(rng: random.Random) -> str:
    draw = rng.random()
    for priority, share in PRIORITY_MIX:
        if draw < share:
            return priority
        draw -= share
    return "default"


async def _one(
    client: Client, request: bytes, priority: str, outcomes: list[dict[str, Any]]
) -> None:
    start = time.perf_counter()
    status, headers = await client.send(request)
    latency = time.perf_counter() - start
    outcomes.append(
        {
            "status": status,
            "priority": priority,
            "latency": latency,
            "retry_after": b"retry-after" in headers,
            "late": latency > DEADLINE_S + LATE_TOLERANCE_S,
        }
    )


async def offer(address: str, path: str, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    host, _, port = address.partition(":")
    client = Client(host, int(port))
    await client.warm(WARM_CONNECTIONS)
    rng = random.Random(seed)
    outcomes: list[dict[str, Any]] = []
    tasks = []
    clock = 0.0
    began = time.perf_counter()
    while clock < seconds:
        clock += rng.expovariate(rate)
        delay = began + clock - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        priority = _priority(rng)
        request = _request(address, path, priority)
        tasks.append(asyncio.ensure_future(_one(client, request, priority, outcomes)))
    await asyncio.gather(*tasks)
    for _, writer in client.idle:
        writer.close()
    return summarize(outcomes)


def summarize(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [o for o in outcomes if o["status"] == 200 and not o["late"]]
    refused = [o for o in outcomes if o["status"] == 429]
    served_latencies = [o["latency"] for o in outcomes if o["status"] == 200]
    return {
        "offered": len(outcomes),
        "served_share": len(ok) / len(outcomes),
        "refused": len(refused),
        "refused_without_retry_after": sum(not o["retry_after"] for o in refused),
        "timeouts": sum(o["status"] == 504 for o in outcomes),
        "other": sum(o["status"] not in {200, 429, 504} for o in outcomes),
        "late": sum(o["late"] for o in outcomes),
        "latest_ms": (max(o["latency"] for o in outcomes) - DEADLINE_S) * 1e3,
        "late_504": sum(o["late"] and o["status"] == 504 for o in outcomes),
        "p99_ms": percentile(served_latencies, 99) * 1e3 if served_latencies else 0.0,
        **{
            f"{priority}_{what}": sum(o["priority"] == priority and test(o) for o in outcomes)
            / max(sum(o["priority"] == priority for o in outcomes), 1)
            for priority, _ in PRIORITY_MIX
            for what, test in (
                ("served", lambda o: o["status"] == 200 and not o["late"]),
                ("timeouts", lambda o: o["status"] == 504),
            )
        },
    }


def load_process(address: str, path: str, rate: float, seconds: float, seed: int) -> Any:
    """One load from a separate process (so the client does not share the node's GIL)."""
    options = {"--load": address, "--path": path, "--rate": rate, "--seconds": seconds}
    out = subprocess.run(
        [sys.executable, __file__, *(f"{k}={v}" for k, v in options.items()), f"--seed={seed}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the report ---------------------------------------------------------------


def report(figures: dict[tuple[str, float], dict[str, Any]], seconds: float) -> None:
    print(
        f"{MEMBERS} agents per type, {SERVICE_S * 1e3:.0f} ms each (capacity {CAPACITY:.0f} "
        f"req/s); deadline {DEADLINE_S} s; {seconds} s of Poisson arrivals per load"
    )
    headers = ["load", "type", "offered", "served", "429", "no Retry-After", "504", "late"]
    headers += ["of them 504", "latest ms past deadline"]
    rows = [
        [
            f"{load}x",
            name,
            f["offered"],
            f["served_share"],
            f["refused"],
            f["refused_without_retry_after"],
            f["timeouts"],
            f["late"],
            f["late_504"],
            f["latest_ms"],
            f["p99_ms"],
        ]
        for load in LOADS
        for name in TYPES
        for f in (figures[name, load],)
    ]
    print(table([*headers, "p99 ms of 200s"], rows))
    print()
    shares = [
        [f"{load}x", name]
        + [
            figures[name, load][f"{p}_{what}"]
            for p, _ in PRIORITY_MIX
            for what in ("served", "timeouts")
        ]
        for load in LOADS
        for name in TYPES
    ]
    by_priority = [f"{p} {what}" for p, _ in PRIORITY_MIX for what in ("served", "504")]
    print(table(["load", "type", *by_priority], shares))
    work3, unbounded3 = figures["work", 3.0], figures["unbounded", 3.0]
    figures_3x = {
        "late_3x": work3["late"],
        "refusals_without_retry_after_3x": work3["refused_without_retry_after"],
        "critical_served_3x": round(work3["critical_served"], 3),
    }
    print(table(["figure", "value", "target"], [[k, v, TARGETS[k]] for k, v in figures_3x.items()]))
    print(
        result(
            {
                **figures_3x,
                "served_share_3x": round(work3["served_share"], 3),
                "refused_3x": work3["refused"],
                "timeouts_3x": work3["timeouts"],
                "offered_3x": work3["offered"],
                "unbounded_served_share_3x": round(unbounded3["served_share"], 3),
                "unbounded_late_3x": unbounded3["late"],
                "unbounded_timeouts_3x": unbounded3["timeouts"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="~15 s instead of ~45 s")
    parser.add_argument("--load", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        summary = uvloop.run(offer(args.load, args.path, args.rate, args.seconds, args.seed))
        print(json.dumps(summary))
        return
    seconds = 1.5 if args.quick else 5.0
    node, address = start_node()
    figures: dict[tuple[str, float], dict[str, Any]] = {}
    try:
        for seed, load in enumerate(LOADS):
            for name in TYPES:
                path = f"/v1/agents/{name}"
                figures[name, load] = load_process(address, path, load * CAPACITY, seconds, seed)
    finally:
        node.stop()
        node.run(handle_signals=False)
    report(figures, seconds)


if __name__ == "__main__":
    main()
