from __future__ import annotations

from actors import Runtime
from messages import ExitKind
from supervisors import Supervisor, SupervisorSpec, agent_child, supervisor_child
from tests.agents import STOPPED, RecordingAgent
from tests.supervisors.helpers import pool


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
