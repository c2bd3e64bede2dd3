"""Several nodes on NATS: a node killed mid-load, a broker restarted mid-load."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from actors import Runtime
from bridges import NatsBridge, NatsServer
from messages import AgentError
from tests.agents import Charge, Receipt
from tests.bridges.conftest import BridgeFactory, start_node_process
from tests.conftest import WAIT

CLIENTS = 4
PER_CLIENT = 75
ATTEMPT_TIMEOUT = 0.5
MAX_ATTEMPTS = 40


class Load:
    """Clients that charge unique ids, retrying each with the same id until it succeeds."""

    def __init__(self, runtime: Runtime, *, halfway: int) -> None:
        self.runtime = runtime
        self.receipts: dict[str, Receipt] = {}
        self.errors: list[BaseException] = []
        self.halfway = threading.Event()
        self._halfway_at = halfway
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(c,), name=f"load-{c}")
            for c in range(CLIENTS)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join(MAX_ATTEMPTS * ATTEMPT_TIMEOUT + WAIT)

    def _client(self, client: int) -> None:
        ledger = self.runtime.ref("ledger")
        for i in range(PER_CLIENT):
            request_id = f"charge-{client}-{i}"
            for _ in range(MAX_ATTEMPTS):
                try:
                    receipt = ledger.ask(
                        Charge(account=request_id, amount=1),
                        timeout=ATTEMPT_TIMEOUT,
                        message_id=request_id,
                    )
                except Exception as exc:
                    with self._lock:
                        self.errors.append(exc)
                    continue
                with self._lock:
                    self.receipts[request_id] = receipt
                    if len(self.receipts) >= self._halfway_at:
                        self.halfway.set()
                break


class Acks:
    """Watches a durable consumer's acks on `$JS.ACK.<stream>.<consumer>.>`."""

    def __init__(self, bridge: NatsBridge, consumer: str, expected: int) -> None:
        self.sequences: set[int] = set()
        self.all_acked = threading.Event()
        self._expected = expected
        subject = f"$JS.ACK.{bridge.events.settings.stream}.{consumer}.>"
        bridge.io.run(bridge.nc.subscribe(subject, cb=self._on_ack), timeout=WAIT)

    async def _on_ack(self, msg: Msg) -> None:
        if msg.data in {b"", b"+ACK"}:  # an empty ack is an ack
            # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>...
            self.sequences.add(int(msg.subject.split(".")[5]))
            if len(self.sequences) >= self._expected:
                self.all_acked.set()


def _stream_messages(bridge: NatsBridge) -> int:
    info = bridge.io.run(bridge.events.js.stream_info(bridge.events.settings.stream), timeout=WAIT)
    return info.state.messages


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[nats]\nurl = "{url}"\nembed = false\n\n'
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
        assert len(load.receipts) == CLIENTS * PER_CLIENT
        assert served_by["alpha"] > 0
        assert served_by["beta"] > 0
        assert all(isinstance(e, AgentError) for e in load.errors), load.errors
        # One Charged event per request id, however often it was retried.
        assert len({r.event_id for r in load.receipts.values()}) == CLIENTS * PER_CLIENT
        assert _stream_messages(bridge) == CLIENTS * PER_CLIENT
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
        assert len(load.receipts) == CLIENTS * PER_CLIENT
        assert load.errors, "the restart should have failed some attempts"
        assert all(isinstance(e, AgentError) for e in load.errors), load.errors
        # Every event that a receipt acknowledged is still in the stream.
        assert _stream_messages(bridge) == CLIENTS * PER_CLIENT
        # ... and the node's LedgerAgent handled (acked) every one of them.
        assert acks.all_acked.wait(WAIT), f"{len(acks.sequences)} acked"
        assert acks.sequences == set(range(1, CLIENTS * PER_CLIENT + 1))
        assert reconnect_s < WAIT
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(WAIT) == 0
        assert node.stdout is not None
        node.stdout.close()
