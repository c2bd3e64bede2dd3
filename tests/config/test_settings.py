from __future__ import annotations

import re
from pathlib import Path

import pytest

import config
from bridges.cli._main import main
from messages import ConfigError


def test_the_embedded_defaults_run_the_support_service_on_kv_state() -> None:
    settings = config.load(env={})
    assert settings.agents.ask_timeout == 30.0
    assert [p.agent for p in settings.pools] == [
        "actors.support:SupportAgent",
        "actors.support:TicketsAgent",
        "actors.support:PricingAgent",
        "actors.support:ShippingAgent",
        "actors.support:PrivacyAgent",
        "actors:PingAgent",
    ]
    assert settings.state.backend == "kv"
    assert settings.state.audit_stream == "AF_AUDIT"


def test_naming_a_redis_url_selects_the_redis_state_backend() -> None:
    settings = config.load(env={"AF_REDIS_URL": "redis://127.0.0.1:6380/2"})
    assert (settings.state.backend, settings.state.redis_url) == (
        "redis",
        "redis://127.0.0.1:6380/2",
    )
    chosen = config.load(env={"AF_REDIS_URL": "redis://x:1/0", "AF_STATE_BACKEND": "memory"})
    assert chosen.state.backend == "memory"


def test_kv_state_without_nats_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[nats]\nenabled = false\n[state]\nbackend = "kv"\n')
    with pytest.raises(ConfigError, match=r"state\.backend"):
        config.load(path, env={})


def test_a_missing_scripted_rules_file_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[[inference.tiers]]\nname = "t"\n[inference.tiers.backend]\nkind = "scripted"\n'
        f'rules_files = ["{tmp_path}/none.toml"]\n'
    )
    with pytest.raises(ConfigError, match=r"inference.tiers\[0\].backend.rules_files\[0\]"):
        config.load(path, env={})


def test_a_file_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[agents]\nask_timeout = 2.0\n")
    settings = config.load(path, env={})
    assert settings.agents.ask_timeout == 2.0
    assert settings.agents.hung_margin == 5.0
    assert settings.pools == []


def test_environment_variables_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[agents]\nask_timeout = 2.0\n")
    settings = config.load(path, env={"AF_ASK_TIMEOUT": "7.5", "AF_NODE_NAME": "n-1"})
    assert settings.agents.ask_timeout == 7.5
    assert settings.node.name == "n-1"


@pytest.mark.parametrize(
    ("toml", "path", "reason"),
    [
        ("[agents]\nask_timeout = -1\n", "agents.ask_timeout", "> 0"),
        ("[agents]\nask_tmeout = 1\n", "agents", "unknown field `ask_tmeout`"),
        ('[[pools]]\nagent = "no-colon"\n', "pools[0].agent", "regex"),
        (
            '[[pools]]\nagent = "a:B"\nrestart = "sometimes"\n',
            "pools[0].restart",
            "Invalid enum value 'sometimes'",
        ),
        ("[supervision.backoff]\njitter = 3\n", "supervision.backoff.jitter", "<= 1"),
    ],
)
def test_bad_values_fail_with_the_key_path_and_the_reason(
    tmp_path: Path, toml: str, path: str, reason: str
) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        config.load(file, env={})
    assert info.value.path == path
    assert reason in info.value.reason


def test_a_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env={"AF_MAX_RESTARTS": "many"})
    assert info.value.path == "supervision.max_restarts"


def test_unparsable_toml_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "broken.toml"
    file.write_text("[agents\n")
    with pytest.raises(ConfigError) as info:
        config.load(file, env={})
    assert info.value.path == str(file)


def test_every_key_of_the_settings_is_documented_in_default_toml() -> None:
    text = config.default_toml()
    for section in (
        config.NodeSettings,
        config.AgentSettings,
        config.SupervisionSettings,
        config.BackoffSettings,
        config.PoolSettings,
        config.StateSettings,
        config.NatsSettings,
        config.EventSettings,
        config.HttpSettings,
        config.Credential,
        config.TokenSettings,
        config.TelemetrySettings,
        config.InferenceSettings,
        config.TierSettings,
        config.ScriptedBackendSettings,
        config.OpenAIBackendSettings,
        config.ExLlamaV2BackendSettings,
        config.LlamaCppBackendSettings,
        config.RemoteBackendSettings,
        config.ScriptedRule,
    ):
        for key in section.__struct_fields__:
            assert f"{key} =" in text or f"{key}:" in text or f".{key}]" in text, key
    for variable in config.ENV_OVERRIDES:
        assert variable in text


def test_tiers_must_have_distinct_names_and_a_known_default() -> None:
    scripted = {"kind": "scripted"}
    with pytest.raises(ConfigError, match=r"inference\.tiers\[1\]\.name"):
        config.decode(
            {
                "inference": {
                    "tiers": [
                        {"name": "large", "backend": scripted},
                        {"name": "large", "backend": scripted},
                    ]
                }
            }
        )
    with pytest.raises(ConfigError, match=r"inference\.default_tier"):
        config.decode(
            {
                "inference": {
                    "default_tier": "huge",
                    "tiers": [{"name": "large", "backend": scripted}],
                }
            }
        )


def test_exllamav2_settings_show_what_its_workers_are_assumed_to_be() -> None:
    backend = config.ExLlamaV2BackendSettings(model_dir="/models/llama-exl2/", max_seq_len=4096)
    assert (backend.model, backend.capacity, backend.context_length) == ("llama-exl2", 1, 4096)
    assert config.ExLlamaV2BackendSettings(model_dir="m").context_length == 0  # the model's own


def test_a_tier_runs_processes_as_its_backend_defaults_unless_told() -> None:
    exl2 = {"kind": "exllamav2", "model_dir": "/models/m"}
    tiers = [
        {"name": "gpu", "backend": exl2},
        {"name": "gpu-here", "backend": exl2, "process": False},
        {"name": "scripted", "backend": {"kind": "scripted"}},
        {"name": "scripted-apart", "backend": {"kind": "scripted"}, "process": True},
        {"name": "far", "backend": {"kind": "remote"}},
    ]
    settings = config.decode({"inference": {"tiers": tiers}})
    assert [t.runs_processes for t in settings.inference.tiers] == [
        True,
        False,
        False,
        True,
        False,
    ]
    assert [t.reached_over_nats for t in settings.inference.tiers] == [
        True,
        False,
        False,
        True,
        True,
    ]


def test_a_file_gets_the_defaults_the_default_file_shows_but_runs_only_its_own_agents(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[http]\nport = 9000\n\n[[pools]]\nagent = "actors:PingAgent"\nsize = 1\n')
    settings, origins = config.load_with_origins(path, env={"AF_NODE_NAME": "n-1"})
    shown = config.load(env={})
    assert (settings.http.enabled, settings.http.port) == (True, 9000)
    assert (settings.state.backend, settings.state.audit_stream) == ("kv", "AF_AUDIT")
    assert settings.inference.tiers == shown.inference.tiers
    assert [p.agent for p in settings.pools] == ["actors:PingAgent"]
    assert origins["http.port"] == str(path)
    assert origins["http.enabled"] == "default"
    assert origins["node.name"] == "env AF_NODE_NAME"


def test_a_file_that_turns_nats_off_keeps_state_in_memory_without_an_audit_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[nats]\nenabled = false\n")
    settings, origins = config.load_with_origins(path, env={})
    assert (settings.state.backend, settings.state.audit_stream) == ("memory", "")
    assert origins["state.backend"] == "default without NATS"
    assert settings.pools == []


def test_the_config_command_says_where_each_value_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[http]\nport = 9000\n")
    monkeypatch.setenv("AF_ASK_TIMEOUT", "7.5")
    assert main(["config", "--config", str(path), "--origins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"http.port = 9000  # {path}" in lines
    assert "agents.ask_timeout = 7.5  # env AF_ASK_TIMEOUT" in lines
    assert "http.enabled = true  # default" in lines


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        ({"http": {"prot": 9000}}, "did you mean `port`?"),
        ({"pools": [{"agent": "actors:PingAgent", "siz": 2}]}, "did you mean `size`?"),
        ({"inference": {"tiers": [{"name": "t", "wokers": 2}]}}, "did you mean `workers`?"),
    ],
)
def test_a_misspelt_key_is_told_the_key_it_likely_meant(raw: dict[str, object], hint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(hint)):
        config.decode(raw)
