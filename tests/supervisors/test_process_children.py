"""Process children: real OS processes, SIGKILLed and restarted like actors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest

from actors import Runtime
from messages import ChildExited, Escalated, ExitKind
from supervisors import (
    Backoff,
    ProcessChild,
    Restart,
    Supervisor,
    SupervisorSpec,
    exit_reason_for,
    process_child,
)
from tests.conftest import EventRecorder
from tests.supervisors.helpers import restarted

SLEEPER = [sys.executable, "-c", "import signal; signal.pause()"]
STUBBORN = [
    sys.executable,
    "-c",
    (
        "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); signal.pause()"
    ),
]


def _process(sup: Supervisor, child_id: str) -> ProcessChild:
    handle = sup.which_children()[child_id]
    assert isinstance(handle, ProcessChild)
    return handle


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0, ExitKind.NORMAL),
        (3, ExitKind.CRASHED),
        (-signal.SIGKILL, ExitKind.KILLED),
        (-signal.SIGSEGV, ExitKind.CRASHED),
    ],
)
def test_exit_statuses_map_to_exit_reasons(code: int, kind: ExitKind) -> None:
    assert exit_reason_for(code).kind is kind


@pytest.mark.slow
def test_a_sigkilled_process_child_is_restarted_with_a_new_pid(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = Supervisor.start(
        SupervisorSpec(name="procs", children=[process_child("p", SLEEPER, shutdown=2)]), runtime
    )
    first = _process(sup, "p")
    os.kill(first.pid, signal.SIGKILL)
    (exited,) = events.wait_for(lambda e: isinstance(e, ChildExited))
    assert isinstance(exited, ChildExited)
    assert exited.reason is ExitKind.KILLED
    restarted(events, "p")
    second = _process(sup, "p")
    assert second.pid != first.pid
    assert second.alive
    assert sup.statistics().children[0].pid == second.pid
    sup.shutdown()
    assert not second.alive


@pytest.mark.slow
def test_process_children_that_keep_dying_escalate(runtime: Runtime, events: EventRecorder) -> None:
    backoff = Backoff(base=0.001, cap=0.005, jitter=0)
    sup = Supervisor.start(
        SupervisorSpec(
            name="procs",
            children=[process_child("p", SLEEPER, shutdown=2)],
            max_restarts=2,
            period=60,
            backoff=backoff,
        ),
        runtime,
    )
    for i in range(2):
        os.kill(_process(sup, "p").pid, signal.SIGKILL)
        restarted(events, "p", count=i + 1)
    last = _process(sup, "p")
    os.kill(last.pid, signal.SIGKILL)
    events.wait_for(lambda e: isinstance(e, Escalated))
    assert sup.wait(timeout=5) is not None


@pytest.mark.slow
def test_a_process_that_exits_with_an_error_is_restarted(
    runtime: Runtime, events: EventRecorder
) -> None:
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    backoff = Backoff(base=0.001, cap=0.005, jitter=0)
    Supervisor.start(
        SupervisorSpec(
            name="procs",
            children=[process_child("p", failing)],
            max_restarts=100,
            period=60,
            backoff=backoff,
        ),
        runtime,
    )
    exits = events.wait_for(lambda e: isinstance(e, ChildExited), count=2)
    assert all(e.detail == "exit code 3" for e in exits)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_shutdown_sigkills_a_process_that_ignores_sigterm(runtime: Runtime) -> None:
    child = ProcessChild(STUBBORN, name="stubborn", stdout=subprocess.PIPE)
    try:
        exits: list[object] = []
        child.link(exits.append)
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
        child.shutdown(timeout=0.05)
        assert not child.alive
        assert [getattr(e, "kind", None) for e in exits] == [ExitKind.KILLED]
    finally:
        child.kill()


@pytest.mark.slow
def test_a_process_child_with_an_infinite_shutdown_is_stopped_gracefully(
    runtime: Runtime,
) -> None:
    sup = Supervisor.start(
        SupervisorSpec(name="procs", children=[process_child("p", SLEEPER, shutdown=math.inf)]),
        runtime,
    )
    child = _process(sup, "p")
    sup.terminate_child("p", timeout=5)
    assert child.exit_link.reason is not None
    assert child.exit_link.reason.kind is ExitKind.SHUTDOWN
    assert sup.alive


@pytest.mark.slow
def test_a_process_child_gets_its_environment(runtime: Runtime, events: EventRecorder) -> None:
    argv = [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['AF_TEST_CODE']))"]
    Supervisor.start(
        SupervisorSpec(
            name="procs",
            children=[
                process_child("p", argv, env={"AF_TEST_CODE": "7"}, restart=Restart.TRANSIENT)
            ],
            max_restarts=100,
            backoff=Backoff(base=0.001, cap=0.005, jitter=0),
        ),
        runtime,
    )
    first = events.wait_for(lambda e: isinstance(e, ChildExited))[0]
    assert first.detail == "exit code 7"  # type: ignore[attr-defined]
