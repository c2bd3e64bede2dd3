"""A three-server NATS cluster with R3 event streams: losing a server loses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import nats
import pytest

from actors import AgentDefaults, Runtime
from bridges import IoLoop, NatsBridge, NatsServer
from config import EventSettings, NatsSettings
from messages import AgentError
from tests.agents import LedgerAgent
from tests.bridges.load import CLIENTS, PER_CLIENT, Acked, Load, stream_messages
from tests.conftest import WAIT

CLUSTER_READY = 30.0
# Events that a killed server had handed to a pull request of the node's old
# connection are redelivered after the ack wait (handler_timeout + 5 s).
R3 = EventSettings(
    stream="AF_EVENTS_R3", dead_letter_stream="AF_DLQ_R3", replicas=3, handler_timeout=1.0
)
REDELIVERED = 15.0


def _jetstream_ready(url: str) -> bool:
    """Whether the cluster can place an R3 stream (meta leader and all peers up)."""

    async def probe() -> bool:
        nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
        js = nc.jetstream()
        try:
            await js.add_stream(name="AF_PROBE", subjects=["af-probe"], num_replicas=3)
            await js.delete_stream("AF_PROBE")
        except (nats.errors.Error, TimeoutError):
            return False
        finally:
            await nc.close()
        return True

    return asyncio.run(probe())


@pytest.fixture
def cluster() -> Iterator[list[NatsServer]]:
    servers = [NatsServer(name=f"n{i}", cluster="af-test") for i in range(3)]
    for server in servers:
        server.routes = tuple(s.route_url for s in servers if s is not server)
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_ready()
        limit = time.monotonic() + CLUSTER_READY
        # A fresh cluster elects its JetStream meta leader within seconds. The
        # servers announce nothing a client could wait on, so placing a probe
        # stream is retried (bounded) until it succeeds.
        while not _jetstream_ready(servers[0].url):
            assert time.monotonic() < limit, "JetStream cluster did not form"
            time.sleep(0.1)  # between placement attempts
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.mark.slow
def test_an_r3_event_stream_survives_the_loss_of_one_server(cluster: list[NatsServer]) -> None:
    urls = ",".join(s.url for s in cluster)
    io = IoLoop(name="cluster-io").start()
    defaults = AgentDefaults(ask_timeout=5.0)
    node, caller = Runtime(node="node", defaults=defaults), Runtime(node="c", defaults=defaults)
    bridges: list[NatsBridge] = []
    try:
        LedgerAgent.spawn(node)
        LedgerAgent.spawn(node)
        for runtime, agents in ((node, [LedgerAgent]), (caller, [])):
            bridge = NatsBridge(runtime, io, NatsSettings(url=urls), R3, agents)
            io.run(bridge.start(), timeout=CLUSTER_READY)
            bridges.append(bridge)
        info = io.run(bridges[0].events.js.stream_info(R3.stream), timeout=WAIT)
        assert info.config.num_replicas == 3
        acked = Acked(CLIENTS * PER_CLIENT)
        bridges[0].events.add_listener(acked)
        load = Load(caller, halfway=CLIENTS * PER_CLIENT // 3).start()
        assert load.halfway.wait(WAIT)
        [victim] = [s for s in cluster if s.url == _connected_url(bridges[0])]
        victim.kill()
        load.join()
        assert len(load.receipts) == CLIENTS * PER_CLIENT, load.error_summary()
        assert all(isinstance(e, AgentError) for e in load.errors), load.errors
        assert stream_messages(bridges[1]) == CLIENTS * PER_CLIENT
        assert acked.all.wait(REDELIVERED), f"{len(acked.sequences)} acked"
        assert acked.sequences == set(range(1, CLIENTS * PER_CLIENT + 1))
        assert bridges[0].reconnects >= 1
    finally:
        for bridge in bridges:
            io.run(bridge.close(), timeout=WAIT)
        io.stop()
        node.close()
        caller.close()


def _connected_url(bridge: NatsBridge) -> str:
    url = bridge.nc.connected_url
    assert url is not None
    return f"nats://{url.hostname}:{url.port}"
