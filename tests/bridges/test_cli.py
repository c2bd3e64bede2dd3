from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridges import build_node, free_port, import_agent
from config import decode
from messages import ConfigError, Ping, Pong

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen[str]:
    # Nothing listens at this URL, so the node embeds its own nats-server.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AF_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "AF_HTTP_PORT": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bridges", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip() == "ready":
            return lines
    pytest.fail(f"node exited before ready: {lines} {proc.stderr.read() if proc.stderr else ''}")


def test_the_node_assembled_from_defaults_answers_pings() -> None:
    node = build_node(
        decode({"nats": {"enabled": False}, "pools": [{"agent": "actors:PingAgent", "size": 2}]})
    )
    root = node.start()
    try:
        assert node.runtime.ref("ping").ask(Ping(payload="x"), timeout=5).payload == "x"
        assert isinstance(node.runtime.ref("ping").ask(Ping(), timeout=5), Pong)
        assert [c.id for c in root.statistics().children] == ["agents.ping"]
        assert node.runtime.state is not None
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def test_a_pool_naming_a_non_agent_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"not an actors\.Agent"):
        import_agent("messages:Ping", key="pools[0].agent")
    with pytest.raises(ConfigError, match="cannot import"):
        import_agent("nowhere.at_all:Agent", key="pools[0].agent")


@pytest.mark.slow
def test_actorfleet_run_prints_its_tree_and_exits_zero_on_sigterm() -> None:
    proc = _start("run")
    try:
        lines = _wait_ready(proc)
        assert any("agents.ping" in line for line in lines)
        assert any("nats-server (process" in line for line in lines)
        assert any("serving http://127.0.0.1:" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_actorfleet_run_exits_non_zero_when_the_root_supervisor_fails(tmp_path: Path) -> None:
    file = tmp_path / "failing.toml"
    file.write_text(
        "[supervision]\nmax_restarts = 0\n\n"
        '[[pools]]\nagent = "tests.agents:CrashOnStartAgent"\nsize = 1\n'
    )
    proc = _start("run", "--config", str(file))
    try:
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 1
        assert "root supervisor exited" in stderr
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_bad_config_file_exits_with_status_2_and_the_key_path(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[agents]\nhung_margin = 0\n")
    proc = _start("run", "--config", str(file))
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "agents.hung_margin" in stderr
