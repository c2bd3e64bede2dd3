"""One holder for every resource a node keeps open: attach, detach, close once."""

from __future__ import annotations

import threading
from collections.abc import Callable

from actors import Runtime
from bridges import IoLoop, Resources
from bridges.node import resource_child
from supervisors import ChildKind
from tests.conftest import WAIT


class Counted:
    """A resource that counts its closes."""

    def __init__(self) -> None:
        self.closes = 0
        self.lost: Callable[[str], None] | None = None

    def describe(self) -> str:
        return f"closed {self.closes} times"

    async def close(self) -> None:
        self.closes += 1

    async def probe(self) -> str | None:
        return None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self.lost = callback


def _child(runtime: Runtime, io: IoLoop, resource: Counted, resources: Resources, log: list[str]):
    async def open_resource() -> Counted:
        return resource

    def attach(held: Counted) -> Callable[[], None]:
        log.append("attached")
        return lambda: log.append("detached")

    return resource_child(
        runtime,
        io,
        id="thing",
        open_resource=open_resource,
        attach=attach,
        timeout=WAIT,
        shutdown=WAIT,
        resources=resources,
    )


def test_a_graceful_stop_detaches_and_closes_the_resource_once(io: IoLoop) -> None:
    runtime = Runtime(node="holder")
    resource, resources, log = Counted(), Resources(), []
    try:
        spec = _child(runtime, io, resource, resources, log)
        assert spec.kind is ChildKind.ACTOR
        handle = spec.start()
        assert log == ["attached"]
        assert io.run(resources.problem("thing"), timeout=WAIT) is None
        exited = threading.Event()
        handle.link(lambda _reason: exited.set())
        handle.shutdown(timeout=WAIT)
        assert exited.wait(WAIT)
        assert io.run(_settled(), timeout=WAIT) is None
        assert resource.closes == 1
        assert log == ["attached", "detached"]
        assert io.run(resources.problem("thing"), timeout=WAIT) == "thing is not open"
    finally:
        runtime.close()


def test_a_killed_holder_closes_its_resource_in_the_background_once(io: IoLoop) -> None:
    runtime = Runtime(node="holder")
    resource, resources, log = Counted(), Resources(), []
    try:
        handle = _child(runtime, io, resource, resources, log).start()
        exited = threading.Event()
        handle.link(lambda _reason: exited.set())
        handle.kill()
        assert exited.wait(WAIT)
        assert io.run(_settled(), timeout=WAIT) is None
        assert resource.closes == 1
        assert log == ["attached", "detached"]
    finally:
        runtime.close()


async def _settled() -> None:
    """Let background closes submitted before this run first (the loop is FIFO)."""
