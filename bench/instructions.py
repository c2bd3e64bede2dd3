"""Instructions per request on the serving side of a NATS agent request, stage by stage.

    python bench/instructions.py [--small N] [--large N]

Wall and CPU time on a shared 2-core machine move by 20% from one run to
the next, which hides any change smaller than that. The number of machine
instructions a piece of Python executes does not: this bench runs each
stage of the path a request takes through a responder (everything but the
sockets) in one thread, N times, under valgrind's callgrind, and reports
(instructions for `--large` - instructions for `--small`) / (large -
small), which cancels the interpreter's start-up. Same code, same count,
to within a fraction of a percent.

Stages (each on prepared inputs, in one thread, so no thread switch is
counted; `bench/nats.py` measures those), each including the one before:

* decode: the request envelope decoded and its metadata checked;
* request: `AgentEndpoint.on_request` whole (decode, checks, admission,
  the hand-off to the agent's mailbox, the reply's callback);
* whole: that, then the agent's turn (`Agent._on_call`: checks, context,
  handler, settling the reply, queueing its answer) and the loop's answer
  (`AgentEndpoint._answer`: counters, encode, the publish call);
* floor: the same request with only what a thread hop needs (decode, a
  `SimpleQueue` hand-off, the handler, encode, a queued reply and its
  publish coroutine), as `bench/nats.py --serve-raw-thread` does.

Needs valgrind (`apt-get install valgrind`); `--dry-run` runs each stage
a few times without it (what the test suite does).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

from actors import Runtime
from bench._common import result, table
from bench.nats import PAYLOAD, PREFIX, Echo, EchoAgent, Echoed, event_settings, nats_settings
from bridges import IoLoop, NatsBridge
from bridges.nats._serving import AgentEndpoint
from bridges.nats._wire import encode_request, envelope_decoder, open_envelope
from messages import Metadata, Priority, decoder_for, encode

STAGES = ("decode", "request", "whole", "floor")
REPLY_TO = "_INBOX.bench.reply"


class FakeMsg:
    """What nats-py hands a subscription's callback: data, reply subject, headers."""

    __slots__ = ("data", "headers", "reply", "subject")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reply = REPLY_TO
        self.headers = None
        self.subject = "bench.agent.echo"


def drive(coro: Any) -> None:
    """Run a coroutine that never really waits to its end, without a loop."""
    try:
        coro.send(None)
    except StopIteration:
        return
    msg = "the coroutine waited"
    raise RuntimeError(msg)


class ServingPath:
    """An echo agent behind an endpoint, none of it running: each stage is called in turn."""

    def __init__(self) -> None:
        self.runtime = Runtime(node="bench-instructions")
        self.bridge = NatsBridge(
            self.runtime,
            IoLoop(name="bench-instructions-io"),  # never started: nothing goes out
            nats_settings("nats://127.0.0.1:1", PREFIX),
            event_settings(PREFIX),
            [EchoAgent],
        )
        self.agent = EchoAgent(self.runtime)  # its thread is never started
        self.runtime.directory.register(self.agent)
        self.endpoint = AgentEndpoint(
            self.bridge, EchoAgent, self.runtime.ref(EchoAgent.agent_type)
        )
        self.published = 0

        async def send(_subject: str, _body: bytes, _headers: dict[str, str] | None) -> None:
            self.published += 1

        self.bridge.send = send  # type: ignore[method-assign]
        self.bridge.outbox._armed = True  # noqa: SLF001 - the loop is never woken
        far = Metadata(id="bench", deadline=time.time() + 86_400, priority=Priority.DEFAULT)
        self.body = encode_request(PAYLOAD, far)
        self.meta = far
        self.decoder = envelope_decoder(Echo)
        self.lane = self.agent.mailbox._lanes[1]  # noqa: SLF001 - taken as the agent would
        self.jobs = self.bridge.outbox._jobs  # noqa: SLF001 - run as the loop would

    def decode(self) -> None:
        open_envelope(self.decoder.decode(self.body))

    def request(self) -> None:
        self.endpoint.on_request(FakeMsg(self.body))  # type: ignore[arg-type]
        self.lane.popleft()

    def whole(self) -> None:
        self.endpoint.on_request(FakeMsg(self.body))  # type: ignore[arg-type]
        self.agent._on_call(self.lane.popleft())  # type: ignore[arg-type]  # noqa: SLF001
        job, args = self.jobs.popleft()
        drive(job(*args))

    def close(self) -> None:
        self.runtime.close()


class Floor:
    """The least a thread hop needs, in one thread: `bench/nats.py --serve-raw-thread`."""

    def __init__(self) -> None:
        self.decoder = decoder_for(Echo)
        self.inbox: queue.SimpleQueue[tuple[str, Echo]] = queue.SimpleQueue()
        self.replies: collections.deque[tuple[str, bytes]] = collections.deque()
        self.body = encode(PAYLOAD)
        self.published = 0

    async def publish(self, subject: str, body: bytes) -> None:
        self.published += 1

    def whole(self) -> None:
        msg = FakeMsg(self.body)
        self.inbox.put((msg.reply, self.decoder.decode(msg.data)))
        reply_to, request = self.inbox.get()
        self.replies.append((reply_to, encode(Echoed(text=request.text))))
        subject, body = self.replies.popleft()
        drive(self.publish(subject, body))


def stage_function(stage: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """The function one request of `stage` runs, and how to clean up after."""
    if stage == "floor":
        return Floor().whole, lambda: None
    path = ServingPath()
    functions = {
        "decode": path.decode,
        "request": path.request,
        "whole": path.whole,
    }
    return functions[stage], path.close


def run_child(stage: str, n: int) -> None:
    """Run `stage` n times (after one warm-up call) and exit."""
    function, close = stage_function(stage)
    try:
        function()
        for _ in range(n):
            function()
    finally:
        close()


def child_env() -> dict[str, str]:
    """The children's environment: bytecode cached, one hash seed, malloc valgrind can see."""
    env = {**os.environ, "PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled once, not parsed in every run
    return env


def instructions(stage: str, n: int, folder: Path) -> int:
    """Instructions callgrind counts for a child that runs `stage` n times."""
    out = folder / f"{stage}.{n}.out"
    env = child_env()
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, str(Path(__file__).resolve()), "--child", stage, str(n),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        msg = f"callgrind on {stage} x{n} failed ({done.returncode}): {done.stderr[-2000:]}"
        raise RuntimeError(msg)
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=5_000)
    parser.add_argument("--dry-run", action="store_true", help="run each stage, no valgrind")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], int(args.child[1]))
        return
    if args.dry_run:
        for stage in STAGES:
            run_child(stage, 3)
        print("dry run: every stage ran", file=sys.stderr)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    # Compiled once beforehand: a run that compiled the modules would count that too.
    warm = [sys.executable, str(Path(__file__).resolve()), "--dry-run"]
    subprocess.run(warm, check=True, env=child_env())
    with tempfile.TemporaryDirectory(prefix="af-instructions-") as folder:
        counts = {}
        for stage in STAGES:
            small = instructions(stage, args.small, Path(folder))
            large = instructions(stage, args.large, Path(folder))
            counts[stage] = (large - small) / (args.large - args.small)
    parts = [
        ("decode and checks", counts["decode"]),
        ("admission and hand-off", counts["request"] - counts["decode"]),
        ("agent's turn and the answer", counts["whole"] - counts["request"]),
        ("whole (actorfleet)", counts["whole"]),
        ("floor (raw+thread)", counts["floor"]),
    ]
    rows = [[name, value, value / counts["floor"]] for name, value in parts]
    print(f"instructions per request (callgrind, {args.large} - {args.small} requests, one thread)")
    print(table(["stage", "instructions", "x floor"], rows))
    figures: dict[str, object] = {f"instructions_{s}": round(counts[s]) for s in STAGES}
    figures["whole_vs_floor"] = round(counts["whole"] / counts["floor"], 2)
    print(result(figures))


if __name__ == "__main__":
    main()
