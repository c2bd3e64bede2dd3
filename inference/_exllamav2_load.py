"""Loading an exllamav2 model, its cache and its dynamic generator, every failure typed.

What exllamav2 0.3.2 leaves unchecked, or checks with `assert`, is handled here:

* A flash-attn that is installed but does not load (built for another
  torch) makes `import exllamav2` itself fail: it is switched off first
  (`EXLLAMA_NO_FLASH_ATTN`) and the generator runs unpaged.
* Paged mode follows exllamav2's own finding (`attn.has_flash_attn_with_paged`,
  and the model config's `no_flash_attn`), not the package's metadata.
* Paged, the generator's `max_batch_size` is the cache's pages; its default,
  `max_input_len // max_q_size` (256), admits far more jobs than a small
  cache holds, and the pool would send them.
* A config.json written by transformers 5 keeps `rope_theta` in
  `rope_parameters`, where exllamav2 does not look (it takes the
  architecture's default, 10000 for Llama): the value is applied, with a warning.
* Every failure while loading is a `ConfigError` (a missing or malformed
  model directory is an `AssertionError` inside exllamav2, a full GPU a
  `RuntimeError`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NamedTuple

from messages import ConfigError

logger: Final = logging.getLogger("actorfleet.inference.exllamav2")

CONFIG_KEY: Final = "inference.tiers.backend"
CACHE_MODES: Final = ("FP16", "Q4", "Q6", "Q8")
# exllamav2's PAGED_PAGE_SIZE: the cache is allocated, and shared, in pages of this many tokens.
PAGE_TOKENS: Final = 256
# The dynamic generator's default `max_q_size`: tokens per sequence per forward pass.
MAX_Q_SIZE: Final = 8
NO_FLASH_ATTN: Final = "EXLLAMA_NO_FLASH_ATTN"


class Loaded(NamedTuple):
    """A loaded model and what drives it."""

    model: Any
    tokenizer: Any
    generator: Any
    job_class: Any
    sampler: Any
    paged: bool
    capacity: int
    context_length: int


class RopeFix(NamedTuple):
    """What a transformers 5 config.json says about rotary positions that exllamav2 misses.

    Attributes:
        theta: `rope_parameters.rope_theta`, when there is no `rope_theta`
            where exllamav2 0.3.2 reads it; else None.
        unread_type: `rope_parameters.rope_type` when it is not `default`
            and there is no `rope_scaling` (exllamav2 reads scaling only
            there); else None.
    """

    theta: float | None
    unread_type: str | None


def rope_fix(config_json: Mapping[str, Any]) -> RopeFix:
    """What exllamav2 would miss in `config_json` (a model's config.json, decoded)."""
    sections = [config_json]
    text_config = config_json.get("text_config")
    if isinstance(text_config, Mapping):
        sections.append(text_config)
    read_theta = any(
        "rope_theta" in s
        or (isinstance(s.get("attn_config"), Mapping) and "rope_theta" in s["attn_config"])
        for s in sections
    )
    read_scaling = any(s.get("rope_scaling") for s in sections)
    theta: float | None = None
    unread_type: str | None = None
    for section in sections:
        params = section.get("rope_parameters")
        if not isinstance(params, Mapping):
            continue
        value = params.get("rope_theta")
        if not read_theta and isinstance(value, int | float) and not isinstance(value, bool):
            theta = float(value)
        kind = params.get("rope_type", "default")
        if not read_scaling and isinstance(kind, str) and kind != "default":
            unread_type = kind
        break
    return RopeFix(theta=theta, unread_type=unread_type)


def paged_capacity(max_input_len: int, cache_tokens: int) -> int:
    """Jobs a paged generator can run at once: each holds at least one page of the cache."""
    return max(1, min(max_input_len // MAX_Q_SIZE, cache_tokens // PAGE_TOKENS))


def check_max_seq_len(max_seq_len: int) -> None:
    """A context length exllamav2's cache can hold: a positive multiple of its page.

    Raises:
        ConfigError: Naming `max_seq_len`, if it is not.
    """
    if max_seq_len <= 0 or max_seq_len % PAGE_TOKENS:
        reason = f"must be a positive multiple of {PAGE_TOKENS} (exllamav2's cache page)"
        raise ConfigError(f"{CONFIG_KEY}.max_seq_len", f"{reason}, not {max_seq_len}")


def switch_off_broken_flash_attn() -> None:
    """Set `EXLLAMA_NO_FLASH_ATTN` if flash-attn is installed but does not load.

    exllamav2 catches only `ModuleNotFoundError` around its flash-attn
    import; a build for another torch raises `ImportError` (undefined
    symbol) or `OSError`, and `import exllamav2` would fail with it.
    """
    if NO_FLASH_ATTN in os.environ or importlib.util.find_spec("flash_attn") is None:
        return
    try:
        importlib.import_module("flash_attn")
        importlib.import_module("flash_attn_2_cuda")
    except (ImportError, OSError) as exc:
        logger.warning("flash-attn is installed but does not load (%s): running unpaged", exc)
        os.environ[NO_FLASH_ATTN] = "1"


def import_gpu_stack() -> tuple[ModuleType, ModuleType, ModuleType]:
    """`exllamav2`, `exllamav2.generator` and `exllamav2.attn`, on a machine with a CUDA GPU.

    Raises:
        ConfigError: If torch or exllamav2 is missing, or no CUDA device is visible.
    """
    switch_off_broken_flash_attn()
    try:
        torch = importlib.import_module("torch")
        exllamav2 = importlib.import_module("exllamav2")
        generator = importlib.import_module("exllamav2.generator")
        attn = importlib.import_module("exllamav2.attn")
    except ImportError as exc:
        msg = f"the exllamav2 backend needs the 'gpu' extra (pip install 'actorfleet[gpu]'): {exc}"
        raise ConfigError(CONFIG_KEY, msg) from exc
    except Exception as exc:  # its C++/CUDA extension is built on first import, and may fail
        msg = f"exllamav2 is installed but does not import: {type(exc).__name__}: {exc}"
        raise ConfigError(CONFIG_KEY, msg) from exc
    if not torch.cuda.is_available():
        raise ConfigError(CONFIG_KEY, "the exllamav2 backend needs a CUDA GPU; none is visible")
    return exllamav2, generator, attn


def load(model_dir: str, *, cache_mode: str, max_seq_len: int | None) -> Loaded:
    """The model in `model_dir` on the GPU, with its cache, tokenizer and dynamic generator.

    Raises:
        ConfigError: If the cache mode or context length is not one exllamav2
            takes, the GPU stack is missing, or anything fails while loading.
    """
    if cache_mode not in CACHE_MODES:
        raise ConfigError(f"{CONFIG_KEY}.cache_mode", f"must be one of {CACHE_MODES}")
    if max_seq_len is not None:
        check_max_seq_len(max_seq_len)
    exllamav2, generator, attn = import_gpu_stack()
    try:
        return _load(
            exllamav2,
            generator,
            attn,
            model_dir=model_dir,
            cache_mode=cache_mode,
            max_seq_len=max_seq_len,
        )
    except ConfigError:
        raise
    except Exception as exc:  # exllamav2 asserts; CUDA and torch raise RuntimeError
        reason = f"cannot load {model_dir} with exllamav2: {type(exc).__name__}: {exc}"
        raise ConfigError(f"{CONFIG_KEY}.model_dir", reason) from exc


def _load(
    exllamav2: Any,
    generator: Any,
    attn: Any,
    *,
    model_dir: str,
    cache_mode: str,
    max_seq_len: int | None,
) -> Loaded:
    config = exllamav2.ExLlamaV2Config(model_dir)
    _apply_rope_fix(config, Path(model_dir) / "config.json")
    if max_seq_len is not None:
        config.max_seq_len = max_seq_len
    elif config.max_seq_len % PAGE_TOKENS:
        reason = (
            f"the model's own context, {config.max_seq_len} tokens, is not a multiple of "
            f"{PAGE_TOKENS} (exllamav2's cache page): set one that is"
        )
        raise ConfigError(f"{CONFIG_KEY}.max_seq_len", reason)
    paged = bool(attn.has_flash_attn_with_paged) and not config.no_flash_attn
    if not paged:
        config.no_flash_attn = True
    caches = {
        "FP16": exllamav2.ExLlamaV2Cache,
        "Q4": exllamav2.ExLlamaV2Cache_Q4,
        "Q6": exllamav2.ExLlamaV2Cache_Q6,
        "Q8": exllamav2.ExLlamaV2Cache_Q8,
    }
    model = exllamav2.ExLlamaV2(config)
    try:
        cache = caches[cache_mode](model, max_seq_len=config.max_seq_len, lazy=True)
        model.load_autosplit(cache)
        tokenizer = exllamav2.ExLlamaV2Tokenizer(config)
        capacity = paged_capacity(config.max_input_len, config.max_seq_len) if paged else 1
        dynamic = generator.ExLlamaV2DynamicGenerator(
            model=model, cache=cache, tokenizer=tokenizer, paged=paged, max_batch_size=capacity
        )
    except BaseException:
        model.unload()  # what was loaded leaves the GPU with the failure
        raise
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        generator=dynamic,
        job_class=generator.ExLlamaV2DynamicJob,
        sampler=generator.ExLlamaV2Sampler,
        paged=paged,
        capacity=capacity,
        context_length=int(config.max_seq_len),
    )


def _apply_rope_fix(config: Any, config_json: Path) -> None:
    fix = rope_fix(json.loads(config_json.read_text(encoding="utf-8")))
    if fix.theta is not None and fix.theta != config.rotary_embedding_base:
        logger.warning(
            "%s keeps rope_theta in rope_parameters (transformers 5), where exllamav2 does not "
            "look: using %s, not its default %s",
            config_json,
            fix.theta,
            config.rotary_embedding_base,
        )
        config.rotary_embedding_base = fix.theta
    if fix.unread_type is not None:
        logger.warning(
            "%s: rope_type %r in rope_parameters is not read by exllamav2 0.3.2 (it reads "
            "rope_scaling); positions past the original context will be wrong",
            config_json,
            fix.unread_type,
        )
