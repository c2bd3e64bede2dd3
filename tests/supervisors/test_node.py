from __future__ import annotations

import gc
import threading

import pytest

from actors import Runtime
from messages import Escalated
from supervisors import EXIT_OK, EXIT_ROOT_FAILED, Node, SupervisorSpec, agent_child
from tests.agents import WorkerAgent
from tests.conftest import EventRecorder


def _run_in_thread(node: Node) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(node.run(handle_signals=False)))
    thread.start()
    return thread, codes


def _root(runtime: Runtime, max_restarts: int = 3) -> SupervisorSpec:
    return SupervisorSpec(
        name="root",
        children=[agent_child(WorkerAgent, runtime, id="w")],
        max_restarts=max_restarts,
    )


def test_a_requested_stop_shuts_down_and_exits_zero() -> None:
    runtime = Runtime(node="n1")
    node = Node(_root(runtime), runtime)
    root = node.start()
    thread, codes = _run_in_thread(node)
    node.stop()
    thread.join(5)
    assert codes == [EXIT_OK]
    assert not root.alive


def test_a_failing_root_ends_the_node_with_a_non_zero_exit() -> None:
    runtime = Runtime(node="n2")
    events = EventRecorder()
    runtime.events.subscribe(events)
    node = Node(_root(runtime, max_restarts=0), runtime)
    root = node.start()
    thread, codes = _run_in_thread(node)
    root.which_children()["w"].kill()
    thread.join(5)
    assert codes == [EXIT_ROOT_FAILED]
    assert events.of(Escalated)


def test_on_ready_sees_the_running_tree_before_run_waits() -> None:
    runtime = Runtime(node="n3")
    node = Node(_root(runtime), runtime)
    seen: list[bool] = []

    def ready(root: object) -> None:
        seen.append(root.which_children()["w"].alive)  # type: ignore[attr-defined]
        node.stop()

    assert node.run(handle_signals=False, on_ready=ready) == EXIT_OK
    assert seen == [True]


@pytest.mark.parametrize("asked", [True, False])
def test_a_node_freezes_the_heap_it_started_with_while_it_runs_if_asked(
    runtime: Runtime, asked: bool
) -> None:
    gc.unfreeze()
    node = Node(SupervisorSpec(name="root", children=[]), runtime, gc_freeze=asked)
    node.start()
    assert (gc.get_freeze_count() > 0) is asked
    node.stop()
    assert node.run(handle_signals=False) == 0
    assert gc.get_freeze_count() == 0  # what it held may be collected again
