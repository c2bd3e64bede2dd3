"""A node assembled from settings: NATS bridge in the tree, embedded server fallback."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from actors import Runtime
from bridges import IoLoop, NatsBridge, NatsServer, build_node, embedded_server, free_port
from bridges.nats._embedded import state_home
from config import EventSettings, NatsSettings, decode
from messages import ChildExited, ChildRestarted, Ping, Pong, Unavailable
from supervisors import ChildStatistics, SupervisorStatistics
from tests.conftest import WAIT, EventRecorder


def _bridges(stats: SupervisorStatistics) -> SupervisorStatistics:
    [child] = [c for c in stats.children if c.id == "bridges"]
    assert child.supervisor is not None
    return child.supervisor


def _child(stats: SupervisorStatistics, child_id: str) -> ChildStatistics:
    [child] = [c for c in stats.children if c.id == child_id]
    return child


def _settings(url: str, **nats: object) -> dict[str, Any]:
    return {
        "node": {"name": "n1"},
        "nats": {"url": url, **nats},
        "pools": [{"agent": "actors:PingAgent", "size": 1}],
    }


def test_a_node_serves_its_pools_over_nats_and_shows_the_connection(
    nats_server: NatsServer,
) -> None:
    node = build_node(decode(_settings(nats_server.url, embed=False)))
    caller = build_node(
        decode({"node": {"name": "caller"}, "nats": {"url": nats_server.url, "embed": False}})
    )
    node.start()
    caller.start()
    try:
        reply = caller.runtime.ref("ping").ask(Ping(payload="remote"), timeout=WAIT)
        assert isinstance(reply, Pong)
        assert reply.responder == "ping/0"
        nats = _child(_bridges(node.root.statistics()), "nats")
        assert nats.detail is not None
        assert nats.detail.startswith(f"connected {nats_server.url}")
    finally:
        for n in (caller, node):
            n.stop()
            assert n.run(handle_signals=False) == 0
    assert node.runtime.transport is None


@pytest.mark.slow
def test_a_lost_connection_is_visible_in_the_tree_and_heals_by_itself(
    nats_server: NatsServer,
) -> None:
    node = build_node(decode(_settings(nats_server.url, embed=False)))
    node.start()
    try:
        bridge = node.runtime.transport
        assert bridge is not None
        reconnected = threading.Event()
        disconnected = threading.Event()
        assert isinstance(bridge, NatsBridge)
        bridge.on_state_change(
            lambda state: (disconnected if state == "disconnected" else reconnected).set()
        )
        nats_server.kill()
        assert disconnected.wait(WAIT)
        detail = _child(_bridges(node.root.statistics()), "nats").detail
        assert detail is not None
        assert detail.startswith("disconnected")
        nats_server.start()
        assert reconnected.wait(WAIT)
        assert node.runtime.ref("ping").ask(Ping(payload="back"), timeout=WAIT).payload == "back"
        nats = _child(_bridges(node.root.statistics()), "nats")
        assert nats.restarts == 0
        assert nats.detail is not None
        assert nats.detail.startswith("connected")
        assert "1 reconnects" in nats.detail
        # Which server answered: its version, and whether it has JetStream.
        assert re.search(r"\(nats-server \d+\.\d+\.\d+, JetStream\)", nats.detail)
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


@pytest.mark.slow
def test_with_no_server_at_the_url_the_node_embeds_one_and_stops_it(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    node = build_node(decode(_settings(url, store_dir=str(tmp_path / "js"))))
    node.start()
    try:
        server = _child(_bridges(node.root.statistics()), "nats-server")
        assert server.pid is not None
        assert node.runtime.ref("ping").ask(Ping(payload="x"), timeout=WAIT).payload == "x"
        detail = _child(_bridges(node.root.statistics()), "nats").detail
        assert detail is not None
        # It listens at the configured URL, where other nodes on this host look.
        assert detail.startswith(f"connected {url}")
        assert (tmp_path / "js" / "jetstream").is_dir()
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)


@pytest.mark.slow
def test_a_connection_given_up_crashes_the_bridge_and_its_supervisor_starts_a_new_one(
    nats_server: NatsServer,
) -> None:
    settings = _settings(
        nats_server.url, embed=False, max_reconnect_attempts=1, reconnect_wait=0.05
    )
    settings["nats"]["connect_timeout"] = WAIT
    node = build_node(decode(settings))
    recorder = EventRecorder()
    node.runtime.events.subscribe(recorder)
    node.start()
    try:
        nats_server.kill()
        recorder.wait_for(lambda e: isinstance(e, ChildExited) and e.child_id == "nats")
        nats_server.start()
        recorder.wait_for(lambda e: isinstance(e, ChildRestarted) and e.child_id == "nats")
        nats = _child(_bridges(node.root.statistics()), "nats")
        assert nats.restarts == 1
        assert nats.last_exit is not None
        assert "connection was closed" in nats.last_exit
        assert nats.detail is not None
        assert nats.detail.startswith("connected")
        assert node.runtime.ref("ping").ask(Ping(payload="again"), timeout=WAIT).payload == "again"
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_a_killed_bridge_is_closed_and_replaced(nats_server: NatsServer) -> None:
    node = build_node(decode(_settings(nats_server.url, embed=False)))
    recorder = EventRecorder()
    node.runtime.events.subscribe(recorder)
    node.start()
    try:
        old = node.runtime.transport
        assert isinstance(old, NatsBridge)
        closed = threading.Event()
        old.on_state_change(lambda state: state == "closed" and closed.set())
        [agent] = [
            a for a in node.runtime.directory.members("resource") if a.name == "resource/nats"
        ]
        agent.kill()
        recorder.wait_for(lambda e: isinstance(e, ChildRestarted) and e.child_id == "nats")
        assert closed.wait(WAIT)
        assert node.runtime.transport is not old
        assert isinstance(node.runtime.transport, NatsBridge)
        assert node.runtime.ref("ping").ask(Ping(payload="new"), timeout=WAIT).payload == "new"
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


@pytest.mark.parametrize(
    ("reconnect_wait", "attempts"), [(2.0, -1), (0.01, 1)], ids=["slow-retry", "few-retries"]
)
def test_the_embedded_server_listens_before_the_bridge_connects_whatever_the_retry_policy(
    tmp_path: Path, reconnect_wait: float, attempts: int
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    settings = _settings(
        url,
        store_dir=str(tmp_path / "js"),
        reconnect_wait=reconnect_wait,
        max_reconnect_attempts=attempts,
    )
    node = build_node(decode(settings))
    node.start()
    try:
        assert node.runtime.ref("ping").ask(Ping(payload="x"), timeout=WAIT).payload == "x"
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_embedding_happens_only_for_one_loopback_url_that_nothing_answers(
    nats_server: NatsServer,
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    one = embedded_server(NatsSettings(url=dead))
    assert one is not None
    assert one.url == dead
    # This user's own state directory, not the shared temporary one.
    assert one.store_dir == state_home() / f"nats-{one.port}"
    # A cluster list with one live member: use the cluster, embed nothing.
    assert embedded_server(NatsSettings(url=f"{dead},{nats_server.url}")) is None
    # A remote server that is down must not be replaced by a private one.
    assert embedded_server(NatsSettings(url="nats://192.0.2.1:4222")) is None
    assert embedded_server(NatsSettings(url=dead, embed=False)) is None


def test_a_start_with_no_server_fails_within_the_connect_timeout(io: IoLoop) -> None:
    runtime = Runtime(node="lonely")
    bridge = NatsBridge(
        runtime,
        io,
        NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5),
        EventSettings(),
    )
    try:
        # The reason is the client's own last error, not only that time ran out.
        with pytest.raises(Unavailable, match=r"cannot connect .*(refused|no servers)"):
            io.run(bridge.start(), timeout=WAIT)
        assert bridge.state == "closed"
    finally:
        runtime.close()
