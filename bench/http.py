"""Over HTTP: an actorfleet agent endpoint vs bare Litestar and FastAPI echoes, same run.

    python bench/http.py [--quick]

Two servers in this process, each on its own uvloop thread: an actorfleet
node (`[http]` on a free port, NATS off, two `ping` agents) answering
`POST /v1/agents/ping` (JSON -> msgspec -> an agent's mailbox -> its thread
-> JSON), and a bare Litestar app on uvicorn answering the same body at
`POST /echo` with the same msgspec types, in the handler, and FastAPI on
uvicorn (pydantic models, what a user would pick instead) answering it at
`POST /echo` too. The load comes from
a separate process: C concurrent keep-alive connections (a minimal HTTP/1.1
client on uvloop, cheaper per request than the servers), each sending
requests back to back for a fixed time per round; rounds
alternate bare, fastapi, actorfleet, bare, ... Figures are medians of the
per-round rates and p99 latencies.

Targets: `ratio_vs_bare >= 0.5` (actorfleet req/s over bare req/s),
`ratio_vs_fastapi >= 1.0` and `p99_ratio_vs_fastapi <= 1.5`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import httpx
import uvicorn
import uvloop
from fastapi import FastAPI
from litestar import Litestar, post
from pydantic import BaseModel

from bench._common import median, percentile, result, table
from bridges import build_node, free_port
from config import decode
from messages import Ping, Pong

CONCURRENCY: Final = 32
BODY: Final = {"payload": "x" * 64}


def start_node(*, gc_freeze: bool = True) -> tuple[Any, str]:
    port = free_port()
    raw = {
        "node": {"name": "bench-http", "gc_freeze": gc_freeze},
        "nats": {"enabled": False},
        "http": {"enabled": True, "port": port},
        "pools": [{"agent": "actors:PingAgent", "size": 2}],
    }
    node = build_node(decode(raw))
    node.start()
    return node, f"http://127.0.0.1:{port}/v1/agents/ping"


class FastPing(BaseModel):
    payload: str = ""


class FastPong(BaseModel):
    payload: str
    responder: str


def start_bare() -> tuple[uvicorn.Server, str]:
    @post("/echo", status_code=200)
    async def echo(data: Ping) -> Pong:
        return Pong(payload=data.payload, responder="bare")

    return serve_app(Litestar([echo]), "/echo")


def start_fastapi() -> tuple[uvicorn.Server, str]:
    app = FastAPI()

    @app.post("/echo")
    async def echo(data: FastPing) -> FastPong:
        return FastPong(payload=data.payload, responder="fastapi")

    return serve_app(app, "/echo")


def serve_app(app: Any, path: str) -> tuple[uvicorn.Server, str]:
    port = free_port()
    config = uvicorn.Config(
        app,
        port=port,
        loop="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=uvloop.run, args=(server.serve(),), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}{path}"


async def _connection(
    host: str, port: int, request: bytes, stop: float, latencies: list[float]
) -> int:
    """Send `request` back to back on one keep-alive connection until `stop`.

    A minimal HTTP/1.1 client (status line, Content-Length): a full client
    library costs more per request than the servers under test.
    """
    reader, writer = await asyncio.open_connection(host, port)
    failures = 0
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
    return failures


async def _load(
    url: str, seconds: float, concurrency: int, payload: object = BODY
) -> dict[str, float]:
    parts = httpx.URL(url)
    host, port = parts.host, parts.port or 80
    body = json.dumps(payload).encode()
    request = (
        f"POST {parts.raw_path.decode()} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    warm: list[float] = []
    await asyncio.gather(
        *(_connection(host, port, request, time.perf_counter() + 0.2, warm) for _ in range(4))
    )
    latencies: list[float] = []
    began = time.perf_counter()
    stop = began + seconds
    failures = await asyncio.gather(
        *(_connection(host, port, request, stop, latencies) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - began
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "failures": float(sum(failures)),
    }


def load_process(
    url: str, seconds: float, concurrency: int, body: object = BODY
) -> dict[str, float]:
    """One round of load from a separate process."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            url,
            "--seconds",
            str(seconds),
            "--concurrency",
            str(concurrency),
            "--body",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="~10 s instead of ~45 s")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="the node with [node] gc_freeze = false"
    )
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help=argparse.SUPPRESS)
    parser.add_argument("--body", default=json.dumps(BODY), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        body = json.loads(args.body)
        figures = uvloop.run(_load(args.load, args.seconds, args.concurrency, body))
        print(json.dumps(figures))
        return
    rounds, seconds = (2, 1.5) if args.quick else (5, 3.0)
    node, node_url = start_node(gc_freeze=not args.no_gc_freeze)
    bare, bare_url = start_bare()
    fastapi, fastapi_url = start_fastapi()
    urls = {"bare": bare_url, "fastapi": fastapi_url, "actorfleet": node_url}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    try:
        for _ in range(rounds):
            for name, url in urls.items():
                runs[name].append(load_process(url, seconds, CONCURRENCY))
    finally:
        bare.should_exit = fastapi.should_exit = True
        node.stop()
        node.run(handle_signals=False)
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for name, samples in runs.items():
        summary[name] = {
            key: median([s[key] for s in samples]) for key in ("rps", "p50_ms", "p99_ms")
        }
        failures = sum(s["failures"] for s in samples)
        rows.append(
            [
                name,
                summary[name]["rps"],
                summary[name]["p50_ms"],
                summary[name]["p99_ms"],
                int(failures),
            ]
        )
    print(f"HTTP POST, {CONCURRENCY} connections, {rounds} rounds x {seconds} s, medians")
    print(table(["server", "req/s", "p50 ms", "p99 ms", "non-200"], rows))
    ratio = summary["actorfleet"]["rps"] / summary["bare"]["rps"]
    vs_fastapi = summary["actorfleet"]["rps"] / summary["fastapi"]["rps"]
    p99_vs_fastapi = summary["actorfleet"]["p99_ms"] / summary["fastapi"]["p99_ms"]
    print(f"ratio_vs_bare = {ratio:.2f} (target >= 0.5)")
    print(f"ratio_vs_fastapi = {vs_fastapi:.2f} (target >= 1.0)")
    print(f"p99_ratio_vs_fastapi = {p99_vs_fastapi:.2f} (target <= 1.5)")
    print(
        result(
            {
                "ratio_vs_bare": round(ratio, 3),
                "ratio_vs_fastapi": round(vs_fastapi, 3),
                "p99_ratio_vs_fastapi": round(p99_vs_fastapi, 3),
                "fastapi_rps": round(summary["fastapi"]["rps"]),
                "fastapi_p99_ms": round(summary["fastapi"]["p99_ms"], 2),
                "actorfleet_rps": round(summary["actorfleet"]["rps"]),
                "bare_rps": round(summary["bare"]["rps"]),
                "actorfleet_p99_ms": round(summary["actorfleet"]["p99_ms"], 2),
                "bare_p99_ms": round(summary["bare"]["p99_ms"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
