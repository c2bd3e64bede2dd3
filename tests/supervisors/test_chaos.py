"""Chaos: agents are crashed and killed every ~50 ms while clients keep asking.

Each ask ends with a reply or a typed error before its deadline, one retry
with the same message id always succeeds, every injected failure is matched
by exactly one restart, and no thread outlives the run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from actors import AgentDefaults, LocalAgentRef, Runtime
from messages import AgentError, ChildRestarted, RequestTimeout, Unavailable, new_message_id
from supervisors import Backoff, Supervisor, SupervisorSpec, agent_child
from tests.agents import Crash, Echo, WorkerAgent
from tests.conftest import EventRecorder

POOL_SIZE = 4
CLIENTS = 4
KILL_EVERY = 0.05
ASK_TIMEOUT = 2.0
CHAOS_BACKOFF = Backoff(base=0.001, cap=0.01, jitter=0.25, reset_after=0.2)


@dataclass
class ClientLog:
    requests: int = 0
    first_failures: Counter[str] = field(default_factory=Counter)
    retry_failures: list[str] = field(default_factory=list)
    untyped: list[BaseException] = field(default_factory=list)
    late: int = 0


def _client(runtime: Runtime, stop: threading.Event, log: ClientLog) -> None:
    pool = runtime.ref("worker")
    while not stop.is_set():
        log.requests += 1
        message_id = new_message_id()
        for attempt in range(2):
            deadline = time.time() + ASK_TIMEOUT
            try:
                reply = pool.ask(Echo(text=message_id), deadline=deadline, message_id=message_id)
            except AgentError as error:
                if time.time() > deadline + 0.5:
                    log.late += 1
                name = type(error).__name__
                if attempt == 0:
                    log.first_failures[name] += 1
                else:
                    log.retry_failures.append(f"{name}: {error}")
                continue
            except Exception as exc:
                log.untyped.append(exc)
                break
            assert reply.text == message_id
            break


def _killer(sup: Supervisor, stop: threading.Event, injected: Counter[str], seed: int) -> None:
    rng = random.Random(seed)
    while not stop.wait(KILL_EVERY):  # the pace of failures is what is under test
        running = [h for h in sup.which_children().values() if h.alive]
        if not running:
            continue
        victim = rng.choice(running)
        assert isinstance(victim, LocalAgentRef)
        child_id = victim.name.split("/", 1)[1]
        if rng.random() < 0.5:
            victim.kill()
        else:
            try:
                victim.tell(Crash(reason="chaos"))
            except Unavailable:
                continue
        injected[child_id] += 1


def run_chaos(duration: float) -> None:
    baseline = {t.ident for t in threading.enumerate()}
    runtime = Runtime(node="chaos", defaults=AgentDefaults(ask_timeout=ASK_TIMEOUT, hung_margin=5))
    events = EventRecorder()
    runtime.events.subscribe(events)
    spec = SupervisorSpec(
        name="pool",
        children=[agent_child(WorkerAgent, runtime, id=f"w{i}") for i in range(POOL_SIZE)],
        max_restarts=10_000,
        period=1.0,
        backoff=CHAOS_BACKOFF,
    )
    sup = Supervisor.start(spec, runtime)
    stop = threading.Event()
    logs = [ClientLog() for _ in range(CLIENTS)]
    injected: Counter[str] = Counter()
    clients = [
        threading.Thread(target=_client, args=(runtime, stop, log), name=f"client-{i}")
        for i, log in enumerate(logs)
    ]
    killer = threading.Thread(
        target=_killer, args=(sup, stop, injected, int(os.environ.get("AF_CHAOS_SEED", "7")))
    )
    for thread in [*clients, killer]:
        thread.start()
    stop.wait(duration)  # the run's length, not a synchronisation
    stop.set()
    for thread in [*clients, killer]:
        thread.join(ASK_TIMEOUT * 3)
        assert not thread.is_alive()

    total = sum(injected.values())
    events.wait_for(lambda e: isinstance(e, ChildRestarted), count=total, timeout=10)
    restarts = {c.id: c.restarts for c in sup.statistics().children}
    sup.shutdown()
    runtime.close()

    requests = sum(log.requests for log in logs)
    first_failures = sum((log.first_failures for log in logs), Counter())
    print(f"chaos: {requests} requests, {total} injected, first failures {dict(first_failures)}")
    assert requests > 100
    assert total >= duration / KILL_EVERY / 2
    assert [exc for log in logs for exc in log.untyped] == []
    assert [f for log in logs for f in log.retry_failures] == []
    assert sum(log.late for log in logs) == 0
    assert RequestTimeout.__name__ not in first_failures
    assert restarts == {f"w{i}": injected[f"w{i}"] for i in range(POOL_SIZE)}

    for thread in threading.enumerate():
        if thread.ident not in baseline:
            thread.join(5)
    assert {t.ident for t in threading.enumerate()} <= baseline


@pytest.mark.slow
def test_a_pool_under_crash_and_kill_chaos_loses_no_request() -> None:
    run_chaos(duration=float(os.environ.get("AF_CHAOS_SECONDS", "2")))


@pytest.mark.soak
def test_a_long_chaos_run_loses_no_request() -> None:
    run_chaos(duration=float(os.environ.get("AF_SOAK_SECONDS", "20")))
