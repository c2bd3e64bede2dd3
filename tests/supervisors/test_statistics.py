from __future__ import annotations

import msgspec

from actors import Runtime
from supervisors import (
    ChildStatus,
    Supervisor,
    SupervisorSpec,
    SupervisorStatistics,
    agent_child,
    supervisor_child,
)
from tests.agents import Block, WorkerAgent, gate
from tests.conftest import EventRecorder
from tests.supervisors.helpers import agent, pool, restarted


def test_statistics_show_children_status_restarts_and_intensity(
    runtime: Runtime, events: EventRecorder
) -> None:
    sup = pool(runtime, n=2, max_restarts=5, period=60)
    agent(sup, "w1").kill()
    restarted(events, "w1")
    stats = sup.statistics()
    assert stats.name == "sup"
    assert stats.strategy == "one_for_one"
    assert stats.intensity.restarts == 1
    assert stats.intensity.max_restarts == 5
    assert [(c.id, c.status, c.restarts, c.last_exit) for c in stats.children] == [
        ("w0", ChildStatus.RUNNING, 0, None),
        ("w1", ChildStatus.RUNNING, 1, "killed"),
    ]


def test_statistics_include_nested_supervisors_and_queue_depth(runtime: Runtime) -> None:
    inner = SupervisorSpec(name="inner", children=[agent_child(WorkerAgent, runtime, id="leaf")])
    sup = Supervisor.start(
        SupervisorSpec(name="root", children=[supervisor_child(inner, runtime)]), runtime
    )
    inner_sup = sup.which_children()["inner"]
    assert isinstance(inner_sup, Supervisor)
    leaf = inner_sup.which_children()["leaf"]
    entered, release = gate("stats")
    leaf.ask_async(Block(gate="stats"))  # type: ignore[attr-defined]
    assert entered.wait(5)
    for _ in range(3):
        leaf.ask_async(Block(gate="stats"))  # type: ignore[attr-defined]
    tree = sup.statistics()
    (child,) = tree.children
    assert child.kind == "supervisor"
    assert child.supervisor is not None
    assert child.supervisor.children[0].queue_depth == 3
    release.set()


def test_statistics_encode_as_json_for_the_health_endpoint(runtime: Runtime) -> None:
    sup = pool(runtime, n=1)
    data = msgspec.json.encode(sup.statistics())
    assert msgspec.json.decode(data, type=SupervisorStatistics) == sup.statistics()


def test_a_stopped_supervisor_reports_its_exit(runtime: Runtime) -> None:
    sup = pool(runtime, n=1)
    sup.shutdown()
    stats = sup.statistics()
    assert stats.status == "stopped"
    assert stats.exit_reason == "shutdown"
