"""Build the pool's tiers from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from config import ExLlamaV2BackendSettings, OpenAIBackendSettings, ScriptedBackendSettings
from inference._exllamav2 import Engine, ExLlamaV2Backend
from inference._openai import OpenAIBackend, api_key_from_env
from inference._pool import InferencePool
from inference._scripted import scripted_from_settings
from inference._tier import TierSpec

if TYPE_CHECKING:
    from config import BackendSettings, InferenceSettings
    from inference._backend import Backend


def backend_from_settings(settings: BackendSettings) -> Backend:
    """One worker's backend, as a tier's `[backend]` table describes it."""
    match settings:
        case ScriptedBackendSettings():
            return scripted_from_settings(settings)
        case OpenAIBackendSettings():
            return OpenAIBackend(
                settings.url,
                settings.model,
                api_key=api_key_from_env(settings.api_key_env),
                capacity=settings.capacity,
                context_length=settings.context_length,
                connect_timeout=settings.connect_timeout,
            )
        case ExLlamaV2BackendSettings():
            engine = Engine(
                settings.model_dir,
                cache_mode=settings.cache_mode,
                max_seq_len=settings.max_seq_len or None,
            )
            return ExLlamaV2Backend(engine)


def pool_from_settings(settings: InferenceSettings) -> InferencePool:
    """An inference pool with fresh backends for each tier's workers.

    Raises:
        ValueError: If there are no tiers or the default tier is unknown.
    """
    tiers = [
        TierSpec(
            name=tier.name,
            workers=[backend_from_settings(tier.backend) for _ in range(tier.workers)],
            queue_bound=tier.queue_bound,
            degrade_wait=tier.degrade_wait,
            breaker_threshold=tier.breaker_threshold,
            breaker_cooldown=tier.breaker_cooldown,
        )
        for tier in settings.tiers
    ]
    return InferencePool(tiers, default_tier=settings.default_tier or None)
