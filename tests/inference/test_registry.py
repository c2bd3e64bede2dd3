"""The backend registry: one kind per settings class, built or refused by the same table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

import config
from inference import (
    InferencePool,
    ScriptedBackend,
    TierSpec,
    backend_from_settings,
    check_available,
)
from inference._openai import OpenAIBackend, UpstreamError
from inference._registry import KINDS
from messages import ConfigError, GenerateRequest, Metadata, new_message_id

NO_GPU_EXTRA = importlib.util.find_spec("exllamav2") is None
MEMBERS = typing.get_args(config.BackendSettings)
EXAMPLES: dict[type[object], config.BackendSettings] = {
    config.ScriptedBackendSettings: config.ScriptedBackendSettings(model="m", capacity=2),
    config.OpenAIBackendSettings: config.OpenAIBackendSettings(
        url="http://127.0.0.1:1/v1", model="served", capacity=3, context_length=2048
    ),
    config.ExLlamaV2BackendSettings: config.ExLlamaV2BackendSettings(
        model_dir="/models/llama-exl2/", max_seq_len=4096
    ),
    config.LlamaCppBackendSettings: config.LlamaCppBackendSettings(
        model_path="/models/tiny-q4_0.gguf", n_ctx=2048
    ),
    config.RemoteBackendSettings: config.RemoteBackendSettings(),
}


def test_every_member_of_the_backend_union_is_registered_under_its_kind() -> None:
    assert set(KINDS) == set(MEMBERS)
    for settings, kind in KINDS.items():
        assert kind.settings is settings
        assert kind.name == settings.__struct_config__.tag
        assert (kind.build is None) == (settings is config.RemoteBackendSettings)
        assert kind.build is not None or kind.elsewhere
        assert bool(kind.modules) == bool(kind.extra)


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.__struct_config__.tag)
def test_every_backend_shows_model_capacity_and_context_length(member: type[object]) -> None:
    settings = EXAMPLES[member]
    assert isinstance(settings, member)
    assert isinstance(settings.model, str)
    assert settings.model
    assert isinstance(settings.capacity, int)
    assert settings.capacity >= 1
    assert isinstance(settings.context_length, int)
    assert settings.context_length >= 0


def test_in_process_backends_are_built_from_their_settings() -> None:
    scripted = backend_from_settings(EXAMPLES[config.ScriptedBackendSettings])
    assert isinstance(scripted, ScriptedBackend)
    assert (scripted.name, scripted.model, scripted.capacity) == ("scripted", "m", 2)
    openai = backend_from_settings(EXAMPLES[config.OpenAIBackendSettings])
    assert isinstance(openai, OpenAIBackend)
    assert (openai.name, openai.model, openai.capacity, openai.context_length) == (
        "openai",
        "served",
        3,
        2048,
    )


def test_a_remote_backend_cannot_run_in_this_process() -> None:
    remote = EXAMPLES[config.RemoteBackendSettings]
    key = "inference.tiers[2].backend"
    for call in (check_available, backend_from_settings):
        with pytest.raises(ConfigError, match="other nodes") as caught:
            call(remote, key=key)
        assert caught.value.path == f"{key}.kind"


def test_backends_that_need_no_extra_are_available() -> None:
    check_available(EXAMPLES[config.ScriptedBackendSettings])
    check_available(EXAMPLES[config.OpenAIBackendSettings])


@pytest.mark.skipif(not NO_GPU_EXTRA, reason="the gpu extra is installed here")
def test_exllamav2_without_the_gpu_extra_is_a_config_error_naming_the_key() -> None:
    exl2 = EXAMPLES[config.ExLlamaV2BackendSettings]
    key = "inference.tiers[0].backend"
    for call in (check_available, backend_from_settings):
        with pytest.raises(ConfigError) as caught:
            call(exl2, key=key)
        assert caught.value.path == key
        assert "pip install 'actorfleet[gpu]'" in caught.value.reason
        assert "exllamav2 not installed" in caught.value.reason


def test_llamacpp_without_the_cpu_extra_is_a_config_error_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "llama_cpp" else found(name, *args),
    )
    key = "inference.tiers[1].backend"
    for call in (check_available, backend_from_settings):
        with pytest.raises(ConfigError) as caught:
            call(EXAMPLES[config.LlamaCppBackendSettings], key=key)
        assert caught.value.path == key
        assert "pip install 'actorfleet[cpu]'" in caught.value.reason
        assert "llama_cpp not installed" in caught.value.reason


def test_a_missing_gguf_file_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    settings = config.LlamaCppBackendSettings(model_path=str(tmp_path / "absent.gguf"))
    with pytest.raises(ConfigError, match="cannot read the model file") as caught:
        check_available(settings, key="inference.tiers[0].backend")
    assert caught.value.path == "inference.tiers[0].backend.model_path"


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"PK\x03\x04 a zip, not a model")
    settings = config.LlamaCppBackendSettings(model_path=str(bogus))
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        check_available(settings)


def test_a_gguf_header_with_nothing_behind_it_is_refused(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00")  # magic and version, then the file ends
    settings = config.LlamaCppBackendSettings(model_path=str(cut))
    with pytest.raises(ConfigError, match="damaged GGUF file"):
        check_available(settings)


@pytest.mark.slow
def test_importing_inference_imports_no_engine() -> None:
    probe = (
        "import sys, inference\n"
        "heavy = {'torch', 'exllamav2', 'llama_cpp', 'inference._exllamav2',"
        " 'inference._llamacpp'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


async def test_retiring_the_pool_closes_every_worker() -> None:
    openai = OpenAIBackend("http://127.0.0.1:1/v1", "served")
    pool = InferencePool(
        [
            TierSpec(name="large", workers=[openai]),
            TierSpec(name="small", workers=[ScriptedBackend()]),
        ]
    )
    await pool.aclose()
    meta = Metadata(id=new_message_id(), deadline=time.time() + 1)
    with pytest.raises(UpstreamError, match="closed"):
        await openai.generate(GenerateRequest(prompt="hello"), lambda _text: None, meta=meta)
