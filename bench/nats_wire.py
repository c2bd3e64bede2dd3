"""What NATS headers cost in nats-py: the measurement behind the request envelope.

    python bench/nats_wire.py [--quick]

Raw nats-py only, no actorfleet code on the wire: request/reply at
concurrency 32 against an echo responder in another process, with no
headers, one header and the four headers a request's metadata would need;
and JetStream publishing with and without `Nats-Msg-Id` (what deduplication
costs). Rounds are interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Final

# This file's folder must not shadow the `nats` package; the repo root goes first.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import nats
import uvloop

from bench._common import median, result, table
from bridges import NatsServer

CONCURRENCY: Final = 32
BODY: Final = b"x" * 104
SUBJECT: Final = "bench.echo"
ONE_HEADER: Final = {"Af-Id": "3f2a9c1e8d7b6a5f12"}
FOUR_HEADERS: Final = {
    "Af-Id": "3f2a9c1e8d7b6a5f12",
    "Af-Deadline": "1795631613.8920522",
    "Af-Priority": "critical",
    "Af-Sender": "client/1",
}
HEADER_CASES: Final = {"none": None, "one": ONE_HEADER, "four": FOUR_HEADERS}


async def serve_echo(url: str) -> None:
    """Answer every request with its own body, until stdin closes."""
    nc = await nats.connect(url)

    async def echo(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(SUBJECT, queue="echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()


async def requests_per_s(url: str, headers: dict[str, str] | None, n: int) -> float:
    nc = await nats.connect(url)

    async def worker(count: int) -> None:
        for _ in range(count):
            await nc.request(SUBJECT, BODY, timeout=5, headers=headers)

    await worker(200)
    start = time.perf_counter()
    await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await nc.close()
    return n // CONCURRENCY * CONCURRENCY / elapsed


async def publishes_per_s(url: str, stream: str, *, dedup: bool, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    ids = itertools.count()

    async def worker(count: int) -> None:
        for _ in range(count):
            headers = {"Nats-Msg-Id": f"{stream}-{next(ids)}"} if dedup else None
            await js.publish(f"{stream}.e", BODY, headers=headers)

    start = time.perf_counter()
    await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await js.delete_stream(stream)
    await nc.close()
    return n // CONCURRENCY * CONCURRENCY / elapsed


def run(quick: bool) -> None:
    rounds, n_requests, n_publishes = (2, 8_000, 4_000) if quick else (5, 40_000, 20_000)
    requests: dict[str, list[float]] = {name: [] for name in HEADER_CASES}
    publishes: dict[str, list[float]] = {"plain": [], "Nats-Msg-Id": []}
    with NatsServer() as server:
        responder = subprocess.Popen(
            [sys.executable, __file__, "--serve", server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            typing.cast("typing.IO[str]", responder.stdout).readline()
            for r in range(rounds):
                for name, headers in HEADER_CASES.items():
                    requests[name].append(
                        uvloop.run(requests_per_s(server.url, headers, n_requests))
                    )
                for name, samples in publishes.items():
                    dedup = name != "plain"
                    stream = f"W{r}{'D' if dedup else 'P'}"
                    rate = publishes_per_s(server.url, stream, dedup=dedup, n=n_publishes)
                    samples.append(uvloop.run(rate))
        finally:
            typing.cast("typing.IO[str]", responder.stdin).close()
            responder.wait(10)
    req = {name: median(samples) for name, samples in requests.items()}
    pub = {name: median(samples) for name, samples in publishes.items()}
    print(f"nats-py request/reply, c={CONCURRENCY}, {len(BODY)}-byte body; {rounds} rounds")
    rows = [[name, req[name], req[name] / req["none"]] for name in HEADER_CASES]
    print(table(["request headers", "req/s", "vs none"], rows))
    print()
    rows = [[name, pub[name], pub[name] / pub["plain"]] for name in publishes]
    print(table(["JetStream publish", "msgs/s", "vs plain"], rows))
    print(
        result(
            {
                "one_header_ratio": round(req["one"] / req["none"], 3),
                "four_headers_ratio": round(req["four"] / req["none"], 3),
                "msg_id_publish_ratio": round(pub["Nats-Msg-Id"] / pub["plain"], 3),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve_echo(args.serve))
    else:
        run(args.quick)


if __name__ == "__main__":
    main()
