from __future__ import annotations

import math
import threading

import pytest

from actors import ExitReason, Runtime
from actors._actor import stop_all
from messages import ExitKind
from supervisors import (
    ChildKind,
    ChildSpec,
    Supervisor,
    SupervisorSpec,
    agent_child,
    supervisor_child,
)
from supervisors._supervisor_actor import Invoke
from tests.agents import STOPPED, Block, RecordingAgent, gate
from tests.conftest import WAIT
from tests.supervisors.helpers import HangingChild, agent, pool

BLOCKED_LONG_ENOUGH = 0.05
HANG_BOUND = 1.0


def test_shutdown_stops_children_in_reverse_start_order(runtime: Runtime) -> None:
    sup = pool(runtime, n=4)
    STOPPED.clear()
    sup.shutdown()
    assert [f"recording/w{i}" for i in (3, 2, 1, 0)] == STOPPED
    assert sup.exit_reason is not None
    assert sup.exit_reason.kind is ExitKind.SHUTDOWN


def test_a_nested_tree_shuts_down_depth_first_in_reverse_order(runtime: Runtime) -> None:
    inner = SupervisorSpec(
        name="inner",
        children=[agent_child(RecordingAgent, runtime, id=f"i{i}") for i in range(2)],
    )
    outer = Supervisor.start(
        SupervisorSpec(
            name="outer",
            children=[
                agent_child(RecordingAgent, runtime, id="first"),
                supervisor_child(inner, runtime),
                agent_child(RecordingAgent, runtime, id="last"),
            ],
        ),
        runtime,
    )
    STOPPED.clear()
    outer.shutdown()
    assert STOPPED == ["recording/last", "recording/i1", "recording/i0", "recording/first"]


def test_shutdown_leaves_no_agent_registered(runtime: Runtime) -> None:
    sup = pool(runtime, n=3)
    sup.shutdown()
    assert runtime.directory.types() == []


def test_kill_takes_the_whole_tree_down_at_once(runtime: Runtime) -> None:
    sup = pool(runtime, n=3)
    children = list(sup.which_children().values())
    sup.kill()
    reason = sup.wait(timeout=5)
    assert reason is not None
    assert reason.kind is ExitKind.KILLED
    assert not any(c.alive for c in children)


def test_a_supervisor_stopped_any_other_way_still_stops_its_children(runtime: Runtime) -> None:
    sup = pool(runtime, n=2)
    children = list(sup.which_children().values())
    sup._ref.stop(timeout=5)  # pykka's own stop, as ActorRegistry.stop_all does
    assert not any(c.alive for c in children)
    assert sup.wait(timeout=5) is not None


def test_stop_all_takes_a_whole_tree_down_and_nothing_is_restarted(runtime: Runtime) -> None:
    sup = pool(runtime, n=2)
    children = list(sup.which_children().values())
    stop_all(timeout=WAIT)
    assert sup.wait(timeout=0) == ExitReason(ExitKind.SHUTDOWN)
    assert not any(c.alive for c in children)
    assert runtime.directory.types() == []


def test_a_supervisor_that_crashes_kills_its_children_and_exits_crashed(runtime: Runtime) -> None:
    sup = pool(runtime, n=2)
    children = list(sup.which_children().values())
    sup._ref.tell(Invoke(lambda: 1 / 0))  # a told message that raises, as a bug would
    reason = sup.wait(timeout=WAIT)
    assert reason == ExitReason(ExitKind.CRASHED, "ZeroDivisionError: division by zero")
    exits: list[ExitReason] = []
    for child in children:
        child.link(exits.append)  # a link to an exited child hears its exit at once
    assert exits == [ExitReason(ExitKind.KILLED)] * 2


def test_a_worker_with_an_infinite_shutdown_is_waited_for_without_a_bound(
    runtime: Runtime,
) -> None:
    slow = agent_child(RecordingAgent, runtime, id="slow", shutdown=math.inf)
    sup = Supervisor.start(SupervisorSpec(name="s", children=[slow]), runtime)
    entered, release = gate("infinite-shutdown")
    busy = agent(sup, "slow").ask_async(Block(gate="infinite-shutdown"))
    assert entered.wait(WAIT)
    STOPPED.clear()
    stopper = threading.Thread(target=sup.shutdown)
    stopper.start()
    try:
        assert sup.wait(timeout=BLOCKED_LONG_ENOUGH) is None, "stopped before its child"
    finally:
        release.set()
    assert busy.get(timeout=WAIT) == "infinite-shutdown"
    stopper.join(WAIT)
    assert sup.exit_reason == ExitReason(ExitKind.SHUTDOWN)
    assert STOPPED == ["recording/slow"]


@pytest.mark.parametrize("kind", [ChildKind.ACTOR, ChildKind.PROCESS])
def test_the_supervisor_kills_a_child_whose_stop_hangs_past_its_shutdown_time(
    runtime: Runtime, kind: ChildKind
) -> None:
    child = HangingChild()
    spec = ChildSpec(id="h", start=lambda: child, shutdown=0.01, kind=kind)
    sup = Supervisor.start(SupervisorSpec(name="s", children=[spec]), runtime)
    try:
        sup.terminate_child("h", timeout=HANG_BOUND)
        assert child.stop_asked.is_set()
        assert child.exit_link.reason == ExitReason(ExitKind.KILLED)
    finally:
        child.release.set()


def test_shutdown_moves_on_from_a_hung_child_to_the_ones_started_before_it(
    runtime: Runtime,
) -> None:
    child = HangingChild()
    children = [
        agent_child(RecordingAgent, runtime, id="first"),
        ChildSpec(id="h", start=lambda: child, shutdown=0.01),
    ]
    sup = Supervisor.start(SupervisorSpec(name="s", children=children), runtime)
    STOPPED.clear()
    stopper = threading.Thread(target=sup.shutdown)
    stopper.start()
    try:
        assert sup.wait(timeout=HANG_BOUND) is not None, "still waiting for the hung child"
    finally:
        child.release.set()
    stopper.join(WAIT)
    assert not child.alive
    assert STOPPED == ["recording/first"]


class _FailingStop(HangingChild):
    def shutdown(self, *, timeout: float) -> None:
        self.stop_asked.set()
        msg = "cannot stop"
        raise OSError(msg)


def test_a_child_whose_stop_raises_is_killed_even_with_an_infinite_shutdown(
    runtime: Runtime,
) -> None:
    child = _FailingStop()
    spec = ChildSpec(id="f", start=lambda: child, shutdown=math.inf)
    sup = Supervisor.start(SupervisorSpec(name="s", children=[spec]), runtime)
    sup.terminate_child("f", timeout=HANG_BOUND)
    assert child.stop_asked.is_set()
    assert child.exit_link.reason == ExitReason(ExitKind.KILLED)
