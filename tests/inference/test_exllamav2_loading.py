"""Loading an exllamav2 engine, with stand-in torch and exllamav2 modules (no GPU).

The stand-ins behave as exllamav2 0.3.2 does where the engine depends on
it: `ExLlamaV2Config` asserts that the model directory exists, the dynamic
generator defaults `max_batch_size` to `max_input_len // 8`, and
`attn.has_flash_attn_with_paged` is exllamav2's own finding.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from config import decode
from inference._exllamav2 import Engine
from inference._exllamav2_load import NO_FLASH_ATTN, rope_fix, switch_off_broken_flash_attn
from messages import ConfigError

LLAMA_DEFAULT_THETA = 10000.0


@dataclass
class StandIns:
    """What the stand-in exllamav2 made, and how it should behave."""

    attn: ModuleType
    generators: list[Any] = field(default_factory=list)
    models: list[Any] = field(default_factory=list)
    generator_error: Exception | None = None
    no_flash_attn: bool = False


def _model_classes(made: StandIns) -> tuple[type, ...]:
    class Config:
        def __init__(self, model_dir: str) -> None:
            config_json = Path(model_dir) / "config.json"
            assert config_json.is_file(), f"Can't find {config_json}"  # as exllamav2 does
            read = json.loads(config_json.read_text())
            self.max_seq_len = read.get("max_position_embeddings", 2048)
            self.max_input_len = 2048
            self.no_flash_attn = made.no_flash_attn
            self.rotary_embedding_base = read.get("rope_theta", LLAMA_DEFAULT_THETA)

    class Model:
        def __init__(self, config: Config) -> None:
            self.config = config
            self.unloaded = False
            made.models.append(self)

        def load_autosplit(self, cache: Any) -> None:
            self.cache = cache

        def unload(self) -> None:
            self.unloaded = True

    class Cache:
        def __init__(self, model: Model, *, max_seq_len: int, lazy: bool) -> None:
            self.max_seq_len = max_seq_len

    class Tokenizer:
        eos_token_id = 1

        def __init__(self, config: Config) -> None:
            self.config = config

    return Config, Model, Cache, Tokenizer


def _generator_class(made: StandIns) -> type:
    class DynamicGenerator:
        def __init__(self, **kwargs: Any) -> None:
            if made.generator_error is not None:
                raise made.generator_error
            self.kwargs = kwargs
            config = kwargs["model"].config
            self.max_batch_size = kwargs["max_batch_size"] or config.max_input_len // 8
            made.generators.append(self)

        def num_remaining_jobs(self) -> int:
            return 0

    return DynamicGenerator


def _stand_in_modules(made: StandIns) -> dict[str, ModuleType]:
    config, model, cache, tokenizer = _model_classes(made)
    exllamav2 = ModuleType("exllamav2")
    exllamav2.ExLlamaV2Config = config  # type: ignore[attr-defined]
    exllamav2.ExLlamaV2 = model  # type: ignore[attr-defined]
    for name in ("ExLlamaV2Cache", "ExLlamaV2Cache_Q4", "ExLlamaV2Cache_Q6", "ExLlamaV2Cache_Q8"):
        setattr(exllamav2, name, cache)
    exllamav2.ExLlamaV2Tokenizer = tokenizer  # type: ignore[attr-defined]
    generator = ModuleType("exllamav2.generator")
    generator.ExLlamaV2DynamicGenerator = _generator_class(made)  # type: ignore[attr-defined]
    generator.ExLlamaV2DynamicJob = object  # type: ignore[attr-defined]
    generator.ExLlamaV2Sampler = object  # type: ignore[attr-defined]
    torch = ModuleType("torch")
    torch.cuda = SimpleNamespace(is_available=lambda: True)  # type: ignore[attr-defined]
    return {
        "torch": torch,
        "exllamav2": exllamav2,
        "exllamav2.generator": generator,
        "exllamav2.attn": made.attn,
    }


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> StandIns:
    attn = ModuleType("exllamav2.attn")
    attn.has_flash_attn_with_paged = True  # type: ignore[attr-defined]
    made = StandIns(attn=attn)
    for name, module in _stand_in_modules(made).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv(NO_FLASH_ATTN, "set so that it is restored")
    monkeypatch.delenv(NO_FLASH_ATTN)
    return made


def _model_dir(tmp_path: Path, **config: object) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048, **config}))
    return str(tmp_path)


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.close()


def test_a_missing_model_directory_is_a_config_error_naming_model_dir(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"backend\.model_dir.*Can't find") as caught:
        Engine(str(tmp_path / "absent"))
    assert isinstance(caught.value.__cause__, AssertionError)


def test_a_failure_after_the_model_is_built_is_typed_and_unloads_the_model(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    stand_ins.generator_error = RuntimeError("CUDA out of memory")
    with pytest.raises(ConfigError, match="RuntimeError: CUDA out of memory"):
        Engine(_model_dir(tmp_path))
    [model] = stand_ins.models
    assert model.unloaded


def test_paged_mode_follows_exllamav2s_finding_not_the_package_metadata(
    stand_ins: StandIns, tmp_path: Path, engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "2.6.3" if name == "flash-attn" else real_version(name),
    )
    stand_ins.attn.has_flash_attn_with_paged = False  # type: ignore[attr-defined]
    engines.append(Engine(_model_dir(tmp_path)))
    stand_ins.attn.has_flash_attn_with_paged = True  # type: ignore[attr-defined]
    stand_ins.no_flash_attn = True  # the model's architecture rules flash-attn out
    engines.append(Engine(_model_dir(tmp_path)))
    for engine, generator in zip(engines, stand_ins.generators, strict=True):
        assert (engine.paged, engine.capacity) == (False, 1)
        assert (generator.kwargs["paged"], generator.kwargs["max_batch_size"]) == (False, 1)


def test_a_paged_generator_admits_as_many_jobs_as_its_cache_has_pages(
    stand_ins: StandIns, tmp_path: Path, engines: list[Engine]
) -> None:
    engines.append(Engine(_model_dir(tmp_path), max_seq_len=2048))
    engines.append(Engine(_model_dir(tmp_path), max_seq_len=8192))
    assert [e.paged for e in engines] == [True, True]
    assert [e.capacity for e in engines] == [8, 32]
    assert [g.max_batch_size for g in stand_ins.generators] == [8, 32]


def test_a_context_that_is_not_whole_cache_pages_is_a_config_error(
    stand_ins: StandIns, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"max_seq_len.*multiple of 256 .*, not 1000"):
        Engine(_model_dir(tmp_path), max_seq_len=1000)
    odd = tmp_path / "odd"
    odd.mkdir()
    with pytest.raises(ConfigError, match=r"max_seq_len.*model's own context, 1000 tokens"):
        Engine(_model_dir(odd, max_position_embeddings=1000))
    assert stand_ins.models == [], "nothing reached the GPU"


def test_settings_take_only_whole_cache_pages_as_max_seq_len() -> None:
    def tier(max_seq_len: int) -> dict[str, object]:
        backend = {"kind": "exllamav2", "model_dir": "/m", "max_seq_len": max_seq_len}
        return {"inference": {"tiers": [{"name": "large", "backend": backend}]}}

    assert decode(tier(0)).inference.tiers[0].backend.context_length == 0
    assert decode(tier(4096)).inference.tiers[0].backend.context_length == 4096
    with pytest.raises(ConfigError, match=r"inference\.tiers\[0\]\.backend\.max_seq_len"):
        decode(tier(1000))


def test_rope_theta_that_transformers_5_moved_is_applied_with_a_warning(
    stand_ins: StandIns, tmp_path: Path, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    moved = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}
    with caplog.at_level(logging.WARNING, logger="actorfleet.inference.exllamav2"):
        engines.append(Engine(_model_dir(tmp_path, **moved)))
    [model] = stand_ins.models
    assert model.config.rotary_embedding_base == 500000.0
    assert "rope_parameters" in caplog.text


def test_rope_parameters_are_read_only_where_exllamav2_would_miss_them() -> None:
    assert rope_fix({"rope_theta": 1e6, "rope_parameters": {"rope_theta": 5.0}}).theta is None
    assert rope_fix({"rope_parameters": {"rope_theta": 1e6}}).theta == 1e6
    nested = {"text_config": {"rope_parameters": {"rope_theta": 1e6, "rope_type": "llama3"}}}
    assert rope_fix(nested) == (1e6, "llama3")
    scaled = {"rope_scaling": {"rope_type": "llama3"}, "rope_parameters": {"rope_type": "llama3"}}
    assert rope_fix(scaled).unread_type is None
    assert rope_fix({"max_position_embeddings": 2048}) == (None, None)


@pytest.fixture
def flash_attn_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path where a test writes its own flash-attn; forgotten afterwards."""
    monkeypatch.setenv(NO_FLASH_ATTN, "set so that it is restored")
    monkeypatch.delenv(NO_FLASH_ATTN)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "flash_attn_2_cuda.py").write_text("")
    yield tmp_path
    for name in ("flash_attn", "flash_attn_2_cuda"):
        sys.modules.pop(name, None)


def _flash_attn_package(root: Path, body: str) -> None:
    (root / "flash_attn").mkdir()
    (root / "flash_attn" / "__init__.py").write_text(body)


def test_a_flash_attn_built_for_another_torch_is_switched_off_before_exllamav2_imports(
    stand_ins: StandIns, flash_attn_at: Path, tmp_path: Path, engines: list[Engine]
) -> None:
    _flash_attn_package(flash_attn_at, "raise ImportError('undefined symbol: _ZN3c104cuda')\n")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    engines.append(Engine(_model_dir(model_dir)))
    assert NO_FLASH_ATTN in os.environ


def test_a_flash_attn_that_loads_is_left_on(flash_attn_at: Path) -> None:
    _flash_attn_package(flash_attn_at, "__version__ = '2.6.3'\n")
    switch_off_broken_flash_attn()
    assert NO_FLASH_ATTN not in os.environ
