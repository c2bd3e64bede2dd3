"""Over NATS: actorfleet agents vs raw nats-py, for requests and events; reconnect time.

    python bench/nats.py [--quick]

The bench starts its own nats-server (JetStream, free loopback port) and two
responder processes: `--serve-agent URL` (a Runtime with two echo agents and
two event-handling agents behind a NatsBridge) and `--serve-raw URL` (plain
nats-py: a queue subscription that decodes, builds the reply and responds,
and a JetStream pull consumer that fetches, decodes and acks). Every client
(actorfleet `NatsBridge.ask` / `publish_async`, raw `nc.request` /
`js.publish`) runs in this process on one uvloop loop.

Requests: c tasks each send sequential requests of the same ~100-byte
message; req/s and latency over interleaved rounds (raw, actorfleet,
faststream, ...), medians of the per-round rates. FastStream is what a user
would pick instead: its NATS RPC (`broker.request`) to a subscriber that
returns a pydantic model, in a third responder process (`--serve-faststream
URL`), with its per-message logging off. CPU per request is each process's
user+sys time over a round divided by its requests: this process (the
client side), the contender's responder, and nats-server (psutil), so a
change is judged on what it costs, not only on wall time. "raw+thread"
(`--serve-raw-thread URL`) is raw nats-py with each handler on a worker
thread and nothing else: the floor of the thread hop that actorfleet's
agents keep (a handler never runs on the I/O loop), so the table shows
what the hop itself costs and what actorfleet adds to it.

Events: PUBLISHERS tasks publish n events (each publish waits for JetStream's
ack; actorfleet's carry a Nats-Msg-Id for deduplication, as do "raw+dedup"'s,
the like-for-like baseline; plain "raw" publishes carry no headers), handled
in the responder process; the clock
runs from the first publish until the consumer's ack floor (polled here)
covers the last event. Each round gets fresh subjects and streams: the
responder is told a new prefix on stdin, sets up a bridge (or raw consumer)
for it and answers "ready".

Reconnect: with the client bridge connected, the server is SIGKILLed and
started again on the same port; the time from the start call until the bridge
reports CONNECTED (raw nats-py with the same reconnect wait beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import queue
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path

# This file's folder must not shadow the `nats` package; the repo root goes first.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import nats
import nats.errors
import psutil
import uvloop
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from actors import Agent, Context, Runtime, handler, make_metadata
from actors._actor import stop_all
from bench._common import median, percentile, result, table
from bridges import ConnectionState, IoLoop, NatsBridge, NatsServer
from config import EventSettings, NatsSettings
from messages import Event, Message, Metadata, decoder_for, encode

PREFIX = "bench"
RAW_SUBJECT = "raw.echo"
HOP_SUBJECT = "hop.echo"
FS_SUBJECT = "faststream.echo"
RAW_DURABLE = "raw"
AGENTS = 2
CONCURRENCY = (1, 32)
PUBLISHERS = 32
FETCH_BATCH = 64
ACK_POLL = 0.001
RECONNECT_WAIT = 0.1
SETUP_TIMEOUT = 30.0
ROUND_TIMEOUT = 120.0
TEXT = "My invoice for October shows two charges for the same seat; please refund one of them."

# Events: actorfleet publishes with Nats-Msg-Id (dedup is part of its contract), so
# the like-for-like baseline is raw JetStream with Nats-Msg-Id too ("raw+dedup");
# plain raw publishing without it is shown beside.
RAW_DEDUP = "raw+dedup"
EVENT_CONTENDERS = ("raw", RAW_DEDUP, "actorfleet")
REQUEST_CONTENDERS = ("raw", "raw+thread", "actorfleet", "faststream")
TARGETS = {
    "ratio_vs_raw_c1": 0.85,
    "ratio_vs_raw_c32": 0.9,
    "ratio_vs_faststream_c32": 2.0,
    "ratio_events_vs_raw": 0.7,
}
CPU_SIDES = ("client", "responder", "server")
RECONNECT_TARGET_S = 2.0

Send = Callable[[], Awaitable[object]]
# Per round: req/s, latencies, CPU microseconds per request of each side.
RequestStats = dict[tuple[int, str], list[tuple[float, list[float], dict[str, float]]]]
EventStats = dict[str, list[tuple[float, float]]]


# Tags of their own: the tests' messages of the same names must not be taken for these.
class Echo(Message, frozen=True, kw_only=True, tag="bench.Echo"):
    text: str


class Echoed(Message, frozen=True, kw_only=True, tag="bench.Echoed"):
    text: str


class TicketFiled(Event, frozen=True, kw_only=True, tag="bench.TicketFiled"):
    text: str


class FsEcho(BaseModel):
    text: str


class FsEchoed(BaseModel):
    text: str


PAYLOAD = Echo(text=TEXT)
EVENT = TicketFiled(text=TEXT)


class EchoAgent(Agent):
    @handler
    def echo(self, msg: Echo, ctx: Context) -> Echoed:
        return Echoed(text=msg.text)


class TallyAgent(Agent):
    @handler
    def note(self, event: TicketFiled, ctx: Context) -> None:
        return None


AF_DURABLE = f"{TallyAgent.agent_type}_{TicketFiled.__name__}"


def nats_settings(url: str, prefix: str) -> NatsSettings:
    return NatsSettings(url=url, prefix=prefix, embed=False, reconnect_wait=RECONNECT_WAIT)


def event_settings(prefix: str) -> EventSettings:
    return EventSettings(stream=f"{prefix}_EVENTS", dead_letter_stream=f"{prefix}_DLQ")


def event_subject(prefix: str) -> str:
    return f"{prefix}.evt.{TicketFiled.__name__}"


def new_meta() -> Metadata:
    return make_metadata(
        default_timeout=5,
        timeout=None,
        deadline=None,
        priority=None,
        message_id=None,
        correlation_id=None,
        sender=None,
    )


async def _quiet(_error: Exception) -> None:
    """nats-py error callback: the reconnect bench breaks connections on purpose."""


async def raw_connect(url: str, **callbacks: Callable[[], Awaitable[None]]) -> Client:
    return await nats.connect(
        url,
        error_cb=_quiet,
        reconnect_time_wait=RECONNECT_WAIT,
        max_reconnect_attempts=-1,
        **callbacks,
    )


def announce_ready() -> None:
    print("ready", flush=True)


# -- responder processes ------------------------------------------------------


def serve_agent(url: str) -> None:
    """Echo agents served over NATS; each stdin line: a prefix to handle events under."""
    io = IoLoop(name="bench-agent-io").start()
    requests_rt, events_rt = Runtime(node="bench-agents"), Runtime(node="bench-events")
    for _ in range(AGENTS):
        EchoAgent.spawn(requests_rt)
        TallyAgent.spawn(events_rt)
    bridge = NatsBridge(
        requests_rt, io, nats_settings(url, PREFIX), event_settings(PREFIX), [EchoAgent]
    )
    io.run(bridge.start(), timeout=SETUP_TIMEOUT)
    events_bridge: NatsBridge | None = None
    try:
        announce_ready()
        for line in sys.stdin:
            if events_bridge is not None:
                io.run(events_bridge.close(), timeout=SETUP_TIMEOUT)
            prefix = line.strip()
            events_bridge = NatsBridge(
                events_rt, io, nats_settings(url, prefix), event_settings(prefix), [TallyAgent]
            )
            io.run(events_bridge.start(), timeout=SETUP_TIMEOUT)
            announce_ready()
    finally:
        for b in (events_bridge, bridge):
            if b is not None:
                io.run(b.close(), timeout=SETUP_TIMEOUT)
        stop_all(timeout=5)
        requests_rt.close()
        events_rt.close()
        io.stop()


async def serve_raw(url: str) -> None:
    """A plain nats-py echo responder; each stdin line: a prefix to consume events under."""
    nc = await raw_connect(url)
    decoder = decoder_for(Echo)

    async def on_request(msg) -> None:
        request = decoder.decode(msg.data)
        await msg.respond(encode(Echoed(text=request.text)))

    await nc.subscribe(RAW_SUBJECT, queue="echo", cb=on_request)
    announce_ready()
    loop = asyncio.get_running_loop()
    consumer: asyncio.Task[None] | None = None
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        await cancel(consumer)
        consumer = await start_raw_consumer(nc.jetstream(), line.strip())
        announce_ready()
    await cancel(consumer)
    await nc.drain()


class ThreadHop:
    """Replies made on worker threads, published by one task on the loop.

    A worker queues its reply and wakes the loop only if it is not already
    awake, so a burst of replies costs the loop one wake-up, as actorfleet's
    outbox does.
    """

    def __init__(self, nc: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.nc = nc
        self.loop = loop
        self.replies: collections.deque[tuple[str, bytes]] = collections.deque()
        self.woken = asyncio.Event()
        self.armed = False

    def work(self, inbox: queue.SimpleQueue[tuple[str, Echo]]) -> None:
        """A worker thread: handle what the loop hands it, forever."""
        while True:
            reply_to, request = inbox.get()
            self.replies.append((reply_to, encode(Echoed(text=request.text))))
            if not self.armed:
                self.armed = True
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.armed = False
        self.woken.set()

    async def publish(self) -> None:
        """The loop's task: publish the replies queued since it last woke."""
        while True:
            await self.woken.wait()
            self.woken.clear()
            while self.replies:
                reply_to, body = self.replies.popleft()
                await self.nc.publish(reply_to, body)


async def serve_raw_thread(url: str) -> None:
    """Plain nats-py with each handler on a thread of its own: the floor of a thread hop.

    What actorfleet's agents need at the least, and nothing else: the loop
    decodes and hands each request to one of AGENTS worker threads (a C
    `SimpleQueue` each, round robin); the workers' replies go out through
    `ThreadHop`. Nothing is admitted, counted, traced or supervised. stdin
    EOF stops it.
    """
    nc = await raw_connect(url)
    loop = asyncio.get_running_loop()
    decoder = decoder_for(Echo)
    hop = ThreadHop(nc, loop)
    inboxes = [queue.SimpleQueue[tuple[str, Echo]]() for _ in range(AGENTS)]
    for inbox in inboxes:
        threading.Thread(target=hop.work, args=(inbox,), daemon=True).start()
    turn = itertools.cycle(inboxes)

    async def on_request(msg) -> None:
        next(turn).put((msg.reply, decoder.decode(msg.data)))

    publisher = asyncio.ensure_future(hop.publish())
    await nc.subscribe(HOP_SUBJECT, queue="echo", cb=on_request)
    announce_ready()
    while await loop.run_in_executor(None, sys.stdin.readline):
        announce_ready()  # no events here: ready for the next round at once
    await cancel(publisher)
    await nc.drain()


async def serve_faststream(url: str) -> None:
    """FastStream's NATS RPC: a subscriber returning a pydantic model; stdin EOF stops it."""
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(FS_SUBJECT, queue="echo")
    async def echo(msg: FsEcho) -> FsEchoed:
        return FsEchoed(text=msg.text)

    await broker.start()
    announce_ready()
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        announce_ready()  # no events here: ready for the next round at once
    await broker.stop()


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start_raw_consumer(js: JetStreamContext, prefix: str) -> asyncio.Task[None]:
    stream = event_settings(prefix).stream
    await js.add_stream(name=stream, subjects=[f"{prefix}.evt.>"])
    sub = await js.pull_subscribe(event_subject(prefix), durable=RAW_DURABLE, stream=stream)
    return asyncio.ensure_future(raw_consume(sub))


async def raw_consume(sub: JetStreamContext.PullSubscription) -> None:
    decoder = decoder_for(TicketFiled)
    while True:
        try:
            batch = await sub.fetch(FETCH_BATCH, timeout=1)
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        for msg in batch:
            decoder.decode(msg.data)
            await msg.ack()


class Responder:
    """A responder process of this file, driven by lines on its stdin."""

    def __init__(self, mode: str, url: str) -> None:
        self.mode = mode
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), mode, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _wait_ready(self) -> None:
        line = typing.cast("typing.IO[str]", self.process.stdout).readline()
        if line.strip() != "ready":
            msg = f"{self.mode} responder said {line!r} (exit status {self.process.poll()})"
            raise RuntimeError(msg)

    def handle_events(self, prefix: str) -> None:
        """Have it set up event handling under `prefix`; return when it is ready."""
        stdin = typing.cast("typing.IO[str]", self.process.stdin)
        stdin.write(prefix + "\n")
        stdin.flush()
        self._wait_ready()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            typing.cast("typing.IO[str]", self.process.stdin).close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- request/reply -------------------------------------------------------------


def af_request(bridge: NatsBridge) -> Send:
    async def call() -> object:
        return await bridge.ask(EchoAgent.agent_type, PAYLOAD, new_meta())

    return call


def raw_request(nc: Client, subject: str = RAW_SUBJECT) -> Send:
    decoder = decoder_for(Echoed)

    async def call() -> object:
        msg = await nc.request(subject, encode(PAYLOAD), timeout=5)
        return decoder.decode(msg.data)

    return call


def faststream_request(broker: NatsBroker) -> Send:
    async def call() -> object:
        msg = await broker.request(FsEcho(text=TEXT), FS_SUBJECT, timeout=5)
        return FsEchoed.model_validate_json(msg.body)

    return call


class CpuMeter:
    """User+sys CPU seconds of the processes on each side of a contender's requests."""

    def __init__(self, server_pid: int, responders: dict[str, int]) -> None:
        self.client = psutil.Process()
        self.server = psutil.Process(server_pid)
        self.responders = {name: psutil.Process(pid) for name, pid in responders.items()}

    def read(self, contender: str) -> dict[str, float]:
        processes = {
            "client": self.client,
            "responder": self.responders[contender],
            "server": self.server,
        }
        return {side: _cpu_seconds(process) for side, process in processes.items()}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run_requests(call: Send, n: int, concurrency: int) -> tuple[float, list[float]]:
    """(req/s, latencies) of n requests sent by `concurrency` sequential tasks."""
    latencies: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    per_task = n // concurrency
    start = time.perf_counter()
    await asyncio.gather(*(worker(per_task) for _ in range(concurrency)))
    return per_task * concurrency / (time.perf_counter() - start), latencies


async def check_replies(calls: dict[str, Send]) -> None:
    for name, call in calls.items():
        reply = await call()
        if reply not in (Echoed(text=TEXT), FsEchoed(text=TEXT)):
            msg = f"{name} answered {reply!r}"
            raise RuntimeError(msg)


# -- events ----------------------------------------------------------------------


async def publish_all(publish: Send, n: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await publish()

    shares = [n // PUBLISHERS + (i < n % PUBLISHERS) for i in range(PUBLISHERS)]
    await asyncio.gather(*(worker(share) for share in shares))


async def wait_acked(js: JetStreamContext, stream: str, durable: str, n: int) -> None:
    """Return once the consumer's ack floor covers stream sequence n (the last event)."""
    while (await js.consumer_info(stream, durable)).ack_floor.stream_seq < n:  # noqa: ASYNC110
        await asyncio.sleep(ACK_POLL)


async def time_events(
    publish: Send,
    js: JetStreamContext,
    prefix: str,
    durable: str,
    n: int,
) -> tuple[float, float]:
    """(events/s end to end, events/s of the publishing alone)."""
    start = time.perf_counter()
    await publish_all(publish, n)
    published = time.perf_counter()
    await wait_acked(js, event_settings(prefix).stream, durable, n)
    done = time.perf_counter()
    return n / (done - start), n / (published - start)


class EventsBench:
    """One events round per call; fresh prefix and streams each time."""

    def __init__(self, io: IoLoop, url: str, nc: Client, responders: dict[str, Responder]) -> None:
        self.io = io
        self.url = url
        self.nc = nc
        self.js = nc.jetstream()
        self.responders = responders
        self.runtime = Runtime(node="bench-publisher")
        self.rounds = 0

    def close(self) -> None:
        self.runtime.close()

    def run(self, name: str, n: int) -> tuple[float, float]:
        self.rounds += 1
        prefix = f"ev{self.rounds}{name.replace('+', '')}"
        self.responders["actorfleet" if name == "actorfleet" else "raw"].handle_events(prefix)
        if name == "actorfleet":
            return self._actorfleet(prefix, n)
        return self._raw(prefix, n, dedup=name == RAW_DEDUP)

    def _raw(self, prefix: str, n: int, *, dedup: bool) -> tuple[float, float]:
        js, subject = self.js, event_subject(prefix)
        ids = itertools.count()

        async def publish() -> object:
            if dedup:
                headers = {"Nats-Msg-Id": f"{prefix}-{next(ids)}"}
                return await js.publish(subject, encode(EVENT), headers=headers)
            return await js.publish(subject, encode(EVENT))

        return self.io.run(time_events(publish, js, prefix, RAW_DURABLE, n), timeout=ROUND_TIMEOUT)

    def _actorfleet(self, prefix: str, n: int) -> tuple[float, float]:
        bridge = NatsBridge(
            self.runtime, self.io, nats_settings(self.url, prefix), event_settings(prefix)
        )
        self.io.run(bridge.start(), timeout=SETUP_TIMEOUT)

        async def publish() -> object:
            return await bridge.publish_async(EVENT, new_meta())

        try:
            timed = time_events(publish, self.js, prefix, AF_DURABLE, n)
            return self.io.run(timed, timeout=ROUND_TIMEOUT)
        finally:
            self.io.run(bridge.close(), timeout=SETUP_TIMEOUT)


# -- reconnect -------------------------------------------------------------------


class StateClock:
    """When each connection state (or raw callback) was last reached, from any thread."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._cond = threading.Condition()

    def mark(self, state: str) -> None:
        with self._cond:
            self.at[state] = time.perf_counter()
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self.at.clear()

    def wait(self, state: str, timeout: float = 10) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: state in self.at, timeout):
                msg = f"no {state} within {timeout} s"
                raise RuntimeError(msg)
            return self.at[state]


def reconnect_samples(
    server: NatsServer, bridge: NatsBridge, io: IoLoop, reps: int
) -> dict[str, list[float]]:
    """Seconds from `server.start()` after a SIGKILL to CONNECTED, bridge and raw client."""
    af, raw = StateClock(), StateClock()
    bridge.on_state_change(af.mark)

    async def reconnected() -> None:
        raw.mark(ConnectionState.CONNECTED)

    async def disconnected() -> None:
        raw.mark(ConnectionState.DISCONNECTED)

    nc = io.run(
        raw_connect(server.url, reconnected_cb=reconnected, disconnected_cb=disconnected),
        timeout=SETUP_TIMEOUT,
    )
    samples: dict[str, list[float]] = {"raw": [], "actorfleet": []}
    try:
        for _ in range(reps):
            af.reset()
            raw.reset()
            server.kill()
            af.wait(ConnectionState.DISCONNECTED)
            raw.wait(ConnectionState.DISCONNECTED)
            start = time.perf_counter()
            server.start()
            samples["actorfleet"].append(af.wait(ConnectionState.CONNECTED) - start)
            samples["raw"].append(raw.wait(ConnectionState.CONNECTED) - start)
            time.sleep(0.3)  # let the responders reconnect too
    finally:
        io.run(nc.close(), timeout=SETUP_TIMEOUT)
    return samples


# -- report ------------------------------------------------------------------------


def request_rows(
    stats: RequestStats,
) -> tuple[list[list[object]], dict[str, float]]:
    """Rows, and the figures of the RESULT line (ratios, CPU per request)."""
    rows: list[list[object]] = []
    figures: dict[str, float] = {}
    for c in CONCURRENCY:
        rps = {name: median([r for r, _, _ in stats[(c, name)]]) for name in REQUEST_CONTENDERS}
        figures[f"ratio_vs_raw_c{c}"] = rps["actorfleet"] / rps["raw"]
        figures[f"ratio_vs_raw_thread_c{c}"] = rps["actorfleet"] / rps["raw+thread"]
        figures[f"floor_thread_vs_raw_c{c}"] = rps["raw+thread"] / rps["raw"]
        figures[f"ratio_vs_faststream_c{c}"] = rps["actorfleet"] / rps["faststream"]
        for name in REQUEST_CONTENDERS:
            merged = [s for _, lat, _ in stats[(c, name)] for s in lat]
            cpu = {side: median([u[side] for _, _, u in stats[(c, name)]]) for side in CPU_SIDES}
            total = sum(cpu.values())
            figures[f"cpu_us_per_request_{name.replace('+', '_')}_c{c}"] = total
            target = ""
            if name == "actorfleet":
                target = f">= {TARGETS[f'ratio_vs_raw_c{c}']}"
                if c == max(CONCURRENCY):
                    target += f"; >= {TARGETS['ratio_vs_faststream_c32']} x faststream"
            rows.append(
                [
                    f"request c={c}",
                    name,
                    rps[name],
                    percentile(merged, 50) * 1e6,
                    percentile(merged, 99) * 1e6,
                    *(cpu[side] for side in CPU_SIDES),
                    total,
                    rps[name] / rps["raw"],
                    target,
                ]
            )
    return rows, figures


def event_rows(events: EventStats) -> tuple[list[list[object]], float, float]:
    """Rows, and actorfleet's ratio to raw with and without Nats-Msg-Id dedup."""
    rate = {name: median([e for e, _ in r]) for name, r in events.items()}
    rows: list[list[object]] = [
        [
            "events",
            name,
            rate[name],
            median([p for _, p in events[name]]),
            rate[name] / rate[RAW_DEDUP],
            rate[name] / rate["raw"],
            f">= {TARGETS['ratio_events_vs_raw']}" if name == "actorfleet" else "",
        ]
        for name in EVENT_CONTENDERS
    ]
    return rows, rate["actorfleet"] / rate[RAW_DEDUP], rate["actorfleet"] / rate["raw"]


def report(
    requests: RequestStats,
    events: EventStats,
    reconnect: dict[str, list[float]],
    header: str,
) -> None:
    print(header)
    req_rows, req_figures = request_rows(requests)
    cpu_columns = [f"cpu us/req {side}" for side in CPU_SIDES]
    columns = ["bench", "contender", "req/s", "p50 us", "p99 us", *cpu_columns, "cpu total"]
    print(table([*columns, "vs raw", "target"], req_rows))
    print()
    ev_rows, ev_ratio, ev_ratio_nodedup = event_rows(events)
    columns = ["bench", "contender", "events/s", "publish/s", "vs raw+dedup", "vs raw", "target"]
    print(table(columns, ev_rows))
    print()
    print(
        table(
            ["reconnect (start -> connected)", "contender", "samples", "p50 s", "max s", "target"],
            [
                [
                    "kill + start same port",
                    name,
                    len(reconnect[name]),
                    median(reconnect[name]),
                    max(reconnect[name]),
                    f"< {RECONNECT_TARGET_S}" if name == "actorfleet" else "",
                ]
                for name in ("raw", "actorfleet")
            ],
        )
    )
    rps = {c: median([r for r, _, _ in requests[(c, "actorfleet")]]) for c in CONCURRENCY}
    print(
        result(
            {
                **{name: round(value, 3) for name, value in req_figures.items()},
                "ratio_events_vs_raw": round(ev_ratio, 3),
                "ratio_events_vs_raw_nodedup": round(ev_ratio_nodedup, 3),
                "reconnect_s": round(median(reconnect["actorfleet"]), 3),
                "actorfleet_rps_c1": round(rps[1]),
                "actorfleet_rps_c32": round(rps[32]),
                "actorfleet_events_per_s": round(median([e for e, _ in events["actorfleet"]])),
            }
        )
    )


# -- main ---------------------------------------------------------------------------


def bench_requests(
    io: IoLoop, calls: dict[str, Send], sizes: dict[int, int], rounds: int, cpu: CpuMeter
) -> RequestStats:
    io.run(check_replies(calls), timeout=SETUP_TIMEOUT)
    for call in calls.values():  # warm-up
        io.run(run_requests(call, 320, 32), timeout=ROUND_TIMEOUT)
    stats: RequestStats = {}
    for _ in range(rounds):
        for c in CONCURRENCY:
            for name, call in calls.items():
                before = cpu.read(name)
                rate, latencies = io.run(run_requests(call, sizes[c], c), timeout=ROUND_TIMEOUT)
                after = cpu.read(name)
                n = len(latencies)
                used = {side: (after[side] - before[side]) / n * 1e6 for side in CPU_SIDES}
                stats.setdefault((c, name), []).append((rate, latencies, used))
    return stats


def bench_events(bench: EventsBench, n: int, rounds: int) -> EventStats:
    for name in EVENT_CONTENDERS:  # warm-up
        bench.run(name, 256)
    events: EventStats = {name: [] for name in EVENT_CONTENDERS}
    for _ in range(rounds):
        for name, samples in events.items():
            samples.append(bench.run(name, n))
    return events


def run_all(server: NatsServer, quick: bool) -> None:
    sizes, n_events, rounds, reps = (
        ({1: 2_000, 32: 8_000}, 4_000, 2, 3) if quick else ({1: 10_000, 32: 40_000}, 20_000, 5, 5)
    )
    io = IoLoop(name="bench-io").start()
    responders: dict[str, Responder] = {}
    runtime = Runtime(node="bench-client")
    bridge = NatsBridge(runtime, io, nats_settings(server.url, PREFIX), event_settings(PREFIX))
    nc: Client | None = None
    broker = NatsBroker(server.url, logger=None)
    events_bench: EventsBench | None = None
    try:
        responders["raw"] = Responder("--serve-raw", server.url)
        responders["raw+thread"] = Responder("--serve-raw-thread", server.url)
        responders["actorfleet"] = Responder("--serve-agent", server.url)
        responders["faststream"] = Responder("--serve-faststream", server.url)
        io.run(bridge.start(), timeout=SETUP_TIMEOUT)
        nc = io.run(raw_connect(server.url), timeout=SETUP_TIMEOUT)
        io.run(broker.connect(), timeout=SETUP_TIMEOUT)
        calls = {
            "raw": raw_request(nc),
            "raw+thread": raw_request(nc, HOP_SUBJECT),
            "actorfleet": af_request(bridge),
            "faststream": faststream_request(broker),
        }
        pids = {name: r.process.pid for name, r in responders.items()}
        cpu = CpuMeter(typing.cast("int", server.pid), pids)
        requests = bench_requests(io, calls, sizes, rounds, cpu)
        events_bench = EventsBench(io, server.url, nc, responders)
        events = bench_events(events_bench, n_events, rounds)
        reconnect = reconnect_samples(server, bridge, io, reps)
    finally:
        for responder in responders.values():
            responder.stop()
        if events_bench is not None:
            events_bench.close()
        if nc is not None:
            io.run(nc.close(), timeout=SETUP_TIMEOUT)
        io.run(broker.stop(), timeout=SETUP_TIMEOUT)
        io.run(bridge.close(), timeout=SETUP_TIMEOUT)
        runtime.close()
        io.stop()
    header = (
        f"payload: {len(encode(PAYLOAD))} bytes msgpack; {rounds} interleaved rounds; "
        f"requests per round {sizes}; {n_events} events per round, {PUBLISHERS} publishers; "
        f"{AGENTS} agents in the responder process; nats-server on {server.url}"
    )
    report(requests, events, reconnect, header)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve-agent", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-raw", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-raw-thread", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-faststream", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the reconnect bench breaks connections on purpose
    if args.serve_agent:
        serve_agent(args.serve_agent)
    elif args.serve_raw:
        uvloop.run(serve_raw(args.serve_raw))
    elif args.serve_raw_thread:
        uvloop.run(serve_raw_thread(args.serve_raw_thread))
    elif args.serve_faststream:
        uvloop.run(serve_faststream(args.serve_faststream))
    else:
        server = NatsServer().start()
        try:
            run_all(server, args.quick)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
