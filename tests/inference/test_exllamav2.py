"""The exllamav2 backend, as far as a machine without a GPU can check it."""

from __future__ import annotations

import importlib.util

import pytest

from bridges import build_node
from config import decode
from inference import pool_from_settings
from inference._exllamav2 import render_prompt, version_tuple
from messages import BadRequest, ChatMessage, ConfigError, GenerateRequest, StartFailed

NO_GPU_EXTRA = importlib.util.find_spec("exllamav2") is None
EXL2_TIER = {
    "name": "large",
    "process": False,
    "backend": {"kind": "exllamav2", "model_dir": "/models/llama-exl2", "cache_mode": "Q4"},
}
EXL2_PROCESS_TIER = {k: v for k, v in EXL2_TIER.items() if k != "process"}


def test_flash_attn_versions_compare_by_their_release_numbers() -> None:
    assert version_tuple("2.5.7") == (2, 5, 7)
    assert version_tuple("2.5.7.post1") == (2, 5, 7)
    assert version_tuple("2.6.0rc1") == (2, 6, 0)
    assert version_tuple("2.5.6+cu121") >= (2, 5, 6)
    assert version_tuple("2.5.6+cu121") < (2, 5, 7)


def test_chat_turns_are_rendered_and_end_with_the_assistant_turn() -> None:
    request = GenerateRequest(
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Where is my order?"),
        ]
    )
    assert render_prompt(request) == "system: Be brief.\nuser: Where is my order?\nassistant:"
    assert render_prompt(GenerateRequest(prompt="raw text")) == "raw text"
    with pytest.raises(BadRequest):
        render_prompt(GenerateRequest(prompt=" "))


def test_choosing_exllamav2_without_a_gpu_fails_with_a_clear_message() -> None:
    settings = decode({"inference": {"tiers": [EXL2_TIER]}})
    with pytest.raises(ConfigError, match=r"gpu.*extra|CUDA GPU"):
        pool_from_settings(settings.inference)


def test_a_node_configured_for_exllamav2_without_a_gpu_does_not_start() -> None:
    node = build_node(decode({"nats": {"enabled": False}, "inference": {"tiers": [EXL2_TIER]}}))
    with pytest.raises(StartFailed, match="inference"):
        node.start()
    node.runtime.close()


def test_exllamav2_workers_run_as_processes_unless_told_otherwise() -> None:
    in_node = {**EXL2_TIER, "name": "small"}
    settings = decode({"inference": {"tiers": [EXL2_PROCESS_TIER, in_node]}})
    assert [t.runs_processes for t in settings.inference.tiers] == [True, False]


@pytest.mark.skipif(not NO_GPU_EXTRA, reason="the gpu extra is installed here")
def test_a_node_with_exllamav2_worker_processes_but_no_gpu_extra_fails_before_starting() -> None:
    with pytest.raises(ConfigError, match=r"gpu.*extra.*not installed"):
        build_node(decode({"inference": {"tiers": [EXL2_PROCESS_TIER]}}))


def test_an_unknown_cache_mode_is_a_config_error_naming_the_key() -> None:
    bad = {**EXL2_TIER, "backend": {**EXL2_TIER["backend"], "cache_mode": "Q3"}}
    with pytest.raises(ConfigError, match=r"inference\.tiers\[0\]\.backend\.cache_mode"):
        decode({"inference": {"tiers": [bad]}})
