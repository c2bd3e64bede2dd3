"""Where the CPU of a NATS agent request goes, stage by stage, on both sides.

    python bench/profile_nats.py [--requests N] [--concurrency C] [--seconds S]

Starts a nats-server (free loopback port) and the responder process of
`bench/nats.py` (`--serve-agent`: two echo agents behind a NatsBridge), then
sends N requests from this process at concurrency C while py-spy samples
both processes (`--gil`: only the thread holding the GIL, so the samples are
Python's CPU, not its waiting; `--nonblocking`: the processes are not
paused). Each sample goes to the stage of the innermost frame that a rule
below names; the table gives each stage's share of the samples and, scaled
by the process's own CPU per request (user+sys from psutil over the same
requests), an estimate of its microseconds per request. uvloop writes and
reads its sockets holding the GIL, so their system calls are sampled too;
what runs without it (a thread blocked in the kernel, the kernel's own
work for a wake-up) is spread over the stages by that scaling.
Bounded: N requests (default 40,000) or S seconds of sampling, whichever
ends first. Needs the `bench` extra (py-spy, psutil) and root or
ptrace permission for py-spy.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import psutil

from actors import Runtime
from bench._common import table
from bench.nats import (
    PREFIX,
    Responder,
    af_request,
    event_settings,
    nats_settings,
    run_requests,
)
from bridges import IoLoop, NatsBridge, NatsServer

# (stage, substrings of "function (file)"): the innermost frame that matches decides.
Rules = list[tuple[str, tuple[str, ...]]]
SERVER_RULES: Rules = [
    ("socket writes (nats-py flusher)", ("writelines",)),
    ("nats-py publish of the reply", ("Client.publish", "_send_publish", "_build_message")),
    ("reply: encode and count", ("encode_answer", "encode_reply", "AgentEndpoint._answer")),
    ("reply: outbox hop back to the loop", ("_outbox.py", "IoLoop.call_soon")),
    ("reply: future and callbacks", ("_reply.py",)),
    ("agent: dispatch on its thread", ("_agent.py", "_actor.py", "_context.py", "Mailbox.get")),
    ("hand-off: admission and mailbox", ("_admission.py", "_ref.py", "Mailbox.queue")),
    ("request: decode and checks", ("_wire.py", "AgentEndpoint.on_request")),
    ("nats.micro endpoint wrapper", ("micro/service.py",)),
    ("nats-py read and parse", ("parser.py", "_process_msg", "_read_loop", "subscription.py")),
    ("event loop (uvloop)", ("IoLoop._run",)),
]
CLIENT_RULES: Rules = [
    ("socket writes (nats-py flusher)", ("writelines",)),
    ("reply: decode", ("decode_reply", "_decode_tagged")),
    ("request: envelope encode", ("encode_request", "_size_checked", "NatsBridge.envelope")),
    (
        "nats-py request (inbox, futures, timeout)",
        ("Client.request", "_request_new_style", "nuid.py", "secrets.py", "random.py", "wait_for"),
    ),
    ("nats-py publish", ("Client.publish", "_send_publish", "_build_message")),
    (
        "ask bookkeeping (metadata, retry loop)",
        ("_calls.py", "NatsBridge.ask", "NatsBridge._request", "make_metadata", "new_meta"),
    ),
    ("nats-py read and parse", ("parser.py", "_process_msg", "_read_loop", "subscription.py")),
    ("the bench's own loop", ("run_requests", "af_request")),
    ("event loop (uvloop)", ("IoLoop._run",)),
]


def stage_of(frames: list[str], rules: Rules) -> str:
    """The stage of a sample: its innermost frame that a rule names."""
    for frame in reversed(frames):
        for stage, needles in rules:
            if any(needle in frame for needle in needles):
                return stage
    return "other"


def stages(raw: Path, rules: Rules) -> tuple[collections.Counter[str], int]:
    """Samples per stage of a py-spy `--format raw` file, and the samples in all."""
    found: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        found[stage_of(stack.split(";"), rules)] += n
        total += n
    return found, total


def record(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` (GIL holder only, not paused) for `seconds` into `out`."""
    command = [
        "py-spy", "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", "400",
        "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def rows_for(side: str, raw: Path, rules: Rules, cpu_us: float) -> list[list[object]]:
    found, total = stages(raw, rules)
    if not total:
        return [[side, "(no samples: is py-spy allowed to attach?)", 0.0, 0.0]]
    return [
        [side, stage, count / total * 100, count / total * cpu_us]
        for stage, count in found.most_common()
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0, help="sampling time")
    args = parser.parse_args()
    server = NatsServer().start()
    io = IoLoop(name="bench-io").start()
    runtime = Runtime(node="bench-client")
    bridge = NatsBridge(runtime, io, nats_settings(server.url, PREFIX), event_settings(PREFIX))
    responder = Responder("--serve-agent", server.url)
    folder = Path(tempfile.mkdtemp(prefix="af-profile-"))
    try:
        io.run(bridge.start(), timeout=30)
        call = af_request(bridge)
        io.run(run_requests(call, 2_000, args.concurrency), timeout=120)  # warm
        me, them = psutil.Process(), psutil.Process(responder.process.pid)
        before = (cpu_seconds(me), cpu_seconds(them))
        spies = [
            record(os.getpid(), folder / "client.txt", args.seconds),
            record(responder.process.pid, folder / "responder.txt", args.seconds),
        ]
        started = time.perf_counter()
        rate, latencies = io.run(run_requests(call, args.requests, args.concurrency), timeout=300)
        elapsed = time.perf_counter() - started
        after = (cpu_seconds(me), cpu_seconds(them))
        for spy in spies:
            spy.wait(args.seconds + 30)
    finally:
        responder.stop()
        io.run(bridge.close(), timeout=10)
        runtime.close()
        io.stop()
        server.stop()
    n = len(latencies)
    client_us = (after[0] - before[0]) / n * 1e6
    responder_us = (after[1] - before[1]) / n * 1e6
    if elapsed < args.seconds:
        print(f"note: the requests took {elapsed:.1f} s, less than the {args.seconds} s sampled")
    print(
        f"{n} requests at c={args.concurrency}: {rate:,.0f} req/s; CPU per request: "
        f"client {client_us:.1f} us, responder {responder_us:.1f} us (psutil, user+sys)"
    )
    rows = rows_for("responder", folder / "responder.txt", SERVER_RULES, responder_us)
    rows += rows_for("client", folder / "client.txt", CLIENT_RULES, client_us)
    print(table(["side", "stage", "% of GIL samples", "us per request"], rows))


if __name__ == "__main__":
    main()
