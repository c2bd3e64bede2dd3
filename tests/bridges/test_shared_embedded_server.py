"""Two node processes share one embedded nats-server; the one that owns it stops mid-load."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from actors import Runtime
from bridges import IoLoop, NatsBridge, free_port
from bridges.nats._embedded import server_pid, wait_exit, with_embedded_credentials
from config import EventSettings, NatsSettings
from messages import AgentError
from tests.bridges.conftest import START, start_node_process
from tests.bridges.load import CLIENTS, PER_CLIENT, Load, stream_messages
from tests.conftest import WAIT

TOTAL = CLIENTS * PER_CLIENT
PAUSE_BOUND = 10.0
# The survivor's log while the owner is gone: a few lines, not one per retry.
LOG_LINES_BOUND = 20


def _config(tmp_path: Path, name: str, url: str, store: Path, http_port: int) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[nats]\nurl = "{url}"\nstore_dir = "{store}"\n\n'
        f'[http]\nport = {http_port}\n\n[state]\nbackend = "kv"\n\n'
        '[[pools]]\nagent = "tests.agents:LedgerAgent"\nsize = 2\n'
    )
    return config


def _ready(port: int, *, within: float) -> float:
    """Seconds until the node's `/readyz` answers 200 (fails after `within`)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling an HTTP endpoint, bounded by `within`
    pytest.fail(f"/readyz on port {port} did not return to 200 within {within} s")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(WAIT + START)
    assert proc.stdout is not None
    proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill", "sigkill-with-its-server"])
def test_the_other_node_keeps_serving_when_the_owner_of_the_embedded_server_stops(
    tmp_path: Path, io: IoLoop, other_runtime: Runtime, how: str
) -> None:
    url, store = f"nats://127.0.0.1:{free_port()}", tmp_path / "js"
    ports = {"alpha": free_port(), "beta": free_port()}
    alpha = start_node_process(
        _config(tmp_path, "alpha", url, store, ports["alpha"]), "alpha", tmp_path / "alpha.log"
    )
    beta = start_node_process(
        _config(tmp_path, "beta", url, store, ports["beta"]), "beta", tmp_path / "beta.log"
    )
    nats = with_embedded_credentials(NatsSettings(url=url, store_dir=str(store)))
    bridge = NatsBridge(other_runtime, io, nats, EventSettings(), ())
    try:
        server = server_pid(store)
        assert server is not None
        io.run(bridge.start(), timeout=START)
        reconnected = threading.Event()
        bridge.on_state_change(lambda state: state == "connected" and reconnected.set())
        load = Load(other_runtime, halfway=TOTAL // 3).start()
        assert load.halfway.wait(WAIT)
        log_before = len((tmp_path / "beta.log").read_text().splitlines())
        stopped = time.monotonic()
        if how == "sigterm":
            alpha.send_signal(signal.SIGTERM)
            assert alpha.wait(START) == 0
        else:
            alpha.send_signal(signal.SIGKILL)
            if how == "sigkill-with-its-server":
                os.kill(server, signal.SIGKILL)
                assert wait_exit(server, timeout=WAIT)
                assert reconnected.wait(PAUSE_BOUND)
        pause = time.monotonic() - stopped
        load.join()
        ready_s = _ready(ports["beta"], within=PAUSE_BOUND)

        assert len(load.receipts) == TOTAL, load.error_summary()
        assert all(isinstance(e, AgentError) for e in load.errors), load.errors
        # Every accepted charge's event is in the stream, once.
        assert len({r.event_id for r in load.receipts.values()}) == TOTAL
        assert stream_messages(bridge) == TOTAL
        assert pause < PAUSE_BOUND
        assert ready_s < PAUSE_BOUND
        # beta owns the server now: the one alpha left, or one it started itself.
        owned = server_pid(store)
        assert owned is not None
        assert (owned == server) is (how != "sigkill-with-its-server")
        beta_log = (tmp_path / "beta.log").read_text().splitlines()[log_before:]
        assert len(beta_log) <= LOG_LINES_BOUND, "\n".join(beta_log)
        if how != "sigkill-with-its-server":
            assert any(f"adopting the embedded nats-server (pid {server})" in x for x in beta_log)
    finally:
        alpha.kill()
        _stop(alpha)
        io.run(bridge.close(), timeout=START)
        _stop(beta)
    assert beta.returncode == 0
    # The last node stopped the server it owned.
    assert wait_exit(owned, timeout=WAIT)
    assert server_pid(store) is None
