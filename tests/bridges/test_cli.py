from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridges import build_node, free_port, import_agent
from bridges.cli._main import main, with_agents
from config import decode, load
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
def test_actorfleet_run_serves_the_support_service_that_send_and_status_reach(
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc = _start("run")
    try:
        lines = _wait_ready(proc)
        assert any("agents.support" in line for line in lines)
        assert any("nats-server (process" in line for line in lines)
        # The server's banner goes to its log, whose path the start lines give.
        [log] = [line.split()[-1] for line in lines if "embedded nats-server, its log in" in line]
        assert "Starting nats-server" in Path(log).read_text()
        assert any("JetStream KV AF_STATE" in line for line in lines)
        assert any("backend  tier large: scripted scripted-large" in line for line in lines)
        [api] = [line.split()[2] for line in lines if line.strip().startswith("API ")]
        url = api.split("/v1/")[0]
        assert any(line.strip().startswith(f"OpenAPI  {url}/schema/openapi.json") for line in lines)
        assert any(line.strip().startswith(f"UI       {url}/dashboard") for line in lines)
        assert any(line.strip().startswith(f"metrics  {url}/metrics") for line in lines)
        capsys.readouterr()

        body = '{"user_id": "u1", "message": "My router arrived broken"}'
        assert main(["send", "support", body, "--url", url, "--request-id", "cli-1"]) == 0
        reply = json.loads(capsys.readouterr().out)
        assert reply["ticket_id"].startswith("T-")
        assert main(["send", "support", '{"user_id": 1}', "--url", url]) == 1
        assert '"status": 422' in capsys.readouterr().err
        assert main(["status", "--url", url]) == 0
        status = capsys.readouterr().out
        assert f"{url}: pass" in status
        assert "agents.support [one_for_one] running" in status

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_status_of_a_node_that_is_not_there_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "no node answers" in capsys.readouterr().err


@pytest.mark.slow  # the audit waits out nats.connect_timeout (2 s)
def test_send_and_audit_with_nothing_reachable_say_so_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["send", "support", "{}", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    sent = capsys.readouterr().err.splitlines()
    assert len(sent) == 1
    assert sent[0].startswith("actorfleet send: no node answers at http://127.0.0.1:")
    assert sent[0].endswith(
        "; start one (actorfleet run), or give its --url or the --config it runs with"
    )
    monkeypatch.setenv("AF_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    assert main(["audit"]) == 2
    audited = capsys.readouterr().err.splitlines()
    assert len(audited) == 1
    assert "no NATS server answers at nats://127.0.0.1:" in audited[0]
    assert audited[0].endswith("start a node (actorfleet run) or set nats.url (AF_NATS_URL)")


def test_send_refuses_a_body_that_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "support", "{nope", "--url", "http://127.0.0.1:1"]) == 2
    assert "not JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_actorfleet_run_exits_non_zero_when_the_root_supervisor_fails(tmp_path: Path) -> None:
    file = tmp_path / "failing.toml"
    file.write_text(
        "[supervision]\nmax_restarts = 0\n\n[nats]\nenabled = false\n\n[http]\nenabled = false\n\n"
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


@pytest.mark.model
def test_model_flags_replace_the_tiers_with_llamacpp_tiers_largest_first(
    large_gguf: Path, small_gguf: Path
) -> None:
    from bridges.cli._main import with_models  # noqa: PLC0415
    from config import LlamaCppBackendSettings  # noqa: PLC0415

    configured = load(None, env={})
    settings = with_models(configured, [str(large_gguf), str(small_gguf)])
    tiers = settings.inference.tiers
    assert [t.name for t in tiers] == ["large", "small"]
    assert [type(t.backend) for t in tiers] == [LlamaCppBackendSettings] * 2
    assert [t.backend.model for t in tiers] == [large_gguf.stem, small_gguf.stem]
    assert all(t.runs_processes for t in tiers)
    assert tiers[0].queue_bound == configured.inference.tiers[0].queue_bound
    assert settings.pools == configured.pools  # the same service, on other models


def test_a_model_flag_naming_no_gguf_file_is_refused_with_the_flag(tmp_path: Path) -> None:
    from bridges.cli._main import with_models  # noqa: PLC0415
    from config import load  # noqa: PLC0415

    missing = tmp_path / "nothing.gguf"
    with pytest.raises(ConfigError) as caught:
        with_models(load(None, env={}), [str(missing)])
    assert caught.value.path == "--model"
    assert str(missing) in caught.value.reason
    assert main(["run", "--model", str(missing), "--duration", "0"]) != 0


GREETER = """
from actors import Agent, Context, handler
from messages import Message


class Hello(Message, frozen=True, kw_only=True):
    name: str


class GreeterAgent(Agent):
    agent_type = "greeter"

    @handler
    def greet(self, msg: Hello, ctx: Context) -> Hello:
        return Hello(name=f"hello {msg.name}")
"""


def test_actorfleet_run_imports_agent_modules_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "af_cli_greeters.py").write_text(GREETER)
    (tmp_path / "node.toml").write_text(
        "[nats]\nenabled = false\n\n[http]\nenabled = false\n\n"
        '[[pools]]\nagent = "af_cli_greeters:GreeterAgent"\nsize = 1\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", "node.toml", "--duration", "0.05"]) == 0
    assert "cannot import" not in capsys.readouterr().err


def test_version_says_which_actorfleet_this_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("actorfleet ")


def test_an_http_port_in_use_is_one_line_naming_the_setting_that_moves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "node.toml").write_text(
            f"[nats]\nenabled = false\n\n[http]\nenabled = true\nport = {port}\n"
        )
        assert main(["run", "--config", str(tmp_path / "node.toml"), "--duration", "5"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "set http.port (AF_HTTP_PORT) to a free port, or 0 to pick one" in err
    assert "Traceback" not in err
    assert not [r for r in caplog.records if r.exc_info]


def test_run_serves_the_agent_classes_it_is_given_instead_of_the_configured_pools() -> None:
    settings = with_agents(load(None, env={}), ["tests.agents:WorkerAgent", "actors:PingAgent"])
    assert [(p.agent, p.size) for p in settings.pools] == [
        ("tests.agents:WorkerAgent", 1),
        ("actors:PingAgent", 1),
    ]
    with pytest.raises(ConfigError, match="module:Class"):
        with_agents(settings, ["not-an-import-path"])


def test_an_agent_module_that_fails_as_it_imports_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "af_broken_syntax.py").write_text("def broken(:\n")
    (tmp_path / "af_broken_raise.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AF_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    for module, said in (
        ("af_broken_syntax", "invalid syntax"),
        ("af_broken_raise", "RuntimeError: no database"),
    ):
        assert main(["run", f"{module}:Agent", "--duration", "0"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert said in err


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    done = subprocess.run(  # noqa: S602 - the pipe is the point
        f"{sys.executable} -m bridges config | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.stdout.strip() == "{"
    assert "Traceback" not in done.stderr
