"""Several nodes on NATS: a node killed mid-load, a broker restarted mid-load."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from actors import Runtime
from bridges import NatsServer
from messages import AgentError
from tests.bridges.conftest import BridgeFactory, start_node_process
from tests.bridges.load import CLIENTS, PER_CLIENT, Acks, Load, stream_messages
from tests.conftest import WAIT


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[nats]\nurl = "{url}"\nembed = false\n\n[http]\nenabled = false\n\n'
        '[[pools]]\nagent = "tests.agents:LedgerAgent"\nsize = 2\n'
    )
    return config


@pytest.mark.slow
def test_a_pool_split_across_two_node_processes_survives_a_sigkill_without_duplicates(
    nats_server: NatsServer, tmp_path: Path, other_runtime: Runtime, connect: BridgeFactory
) -> None:
    config = _config(tmp_path, nats_server.url)
    alpha = start_node_process(config, "alpha", tmp_path / "alpha.log")
    beta = start_node_process(config, "beta", tmp_path / "beta.log")
    try:
        bridge = connect(other_runtime)
        load = Load(other_runtime, halfway=CLIENTS * PER_CLIENT // 3).start()
        assert load.halfway.wait(WAIT)
        alpha.send_signal(signal.SIGKILL)
        load.join()
        served_by = Counter(r.node for r in load.receipts.values())
        assert len(load.receipts) == CLIENTS * PER_CLIENT, load.error_summary()
        assert served_by["alpha"] > 0
        assert served_by["beta"] > 0
        assert all(isinstance(e, AgentError) for e in load.errors), load.errors
        # One Charged event per request id, however often it was retried.
        assert len({r.event_id for r in load.receipts.values()}) == CLIENTS * PER_CLIENT
        assert stream_messages(bridge) == CLIENTS * PER_CLIENT
    finally:
        alpha.kill()
        beta.send_signal(signal.SIGTERM)
        assert beta.wait(WAIT) == 0
        alpha.wait(WAIT)
        for proc in (alpha, beta):
            assert proc.stdout is not None
            proc.stdout.close()


@pytest.mark.slow
def test_a_broker_restart_mid_load_heals_by_itself_and_loses_no_event(
    nats_server: NatsServer, tmp_path: Path, other_runtime: Runtime, connect: BridgeFactory
) -> None:
    config = _config(tmp_path, nats_server.url)
    node = start_node_process(config, "gamma", tmp_path / "gamma.log")
    try:
        bridge = connect(other_runtime)
        reconnected = threading.Event()
        bridge.on_state_change(lambda state: state == "connected" and reconnected.set())
        acks = Acks(bridge, "ledger_Charged", CLIENTS * PER_CLIENT)
        load = Load(other_runtime, halfway=CLIENTS * PER_CLIENT // 3).start()
        assert load.halfway.wait(WAIT)
        restarted = time.monotonic()
        nats_server.restart()
        assert reconnected.wait(WAIT)
        reconnect_s = time.monotonic() - restarted
        load.join()
        assert len(load.receipts) == CLIENTS * PER_CLIENT, load.error_summary()
        assert all(isinstance(e, AgentError) for e in load.errors), load.errors
        # Every event that a receipt acknowledged is still in the stream.
        assert stream_messages(bridge) == CLIENTS * PER_CLIENT
        # ... and the node's LedgerAgent handled (acked) every one of them.
        assert acks.all_acked.wait(WAIT), f"{len(acks.sequences)} acked"
        assert acks.sequences == set(range(1, CLIENTS * PER_CLIENT + 1))
        assert reconnect_s < WAIT
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(WAIT) == 0
        assert node.stdout is not None
        node.stdout.close()
