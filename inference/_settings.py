"""Build the pool's tiers from settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from config import (
    ExLlamaV2BackendSettings,
    OpenAIBackendSettings,
    RemoteBackendSettings,
    ScriptedBackendSettings,
)
from inference._exllamav2 import Engine, ExLlamaV2Backend
from inference._openai import OpenAIBackend, api_key_from_env
from inference._pool import InferencePool
from inference._scripted import scripted_from_settings
from inference._tier import TierSpec
from messages import ConfigError

if TYPE_CHECKING:
    from config import BackendSettings, InferenceSettings, TierSettings
    from inference._backend import Backend

RemoteFactory = Callable[["TierSettings"], "Backend"]


def backend_from_settings(settings: BackendSettings) -> Backend:
    """One worker's backend, as a tier's `[backend]` table describes it, in this process.

    Raises:
        ConfigError: For a `remote` backend, which only a worker on another
            node can run.
    """
    match settings:
        case RemoteBackendSettings():
            reason = "a remote tier is served by worker processes, not in this process"
            raise ConfigError("inference.tiers.backend.kind", reason)
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


def pool_from_settings(
    settings: InferenceSettings, *, remote: RemoteFactory | None = None
) -> InferencePool:
    """An inference pool with fresh backends for each tier's workers.

    Args:
        settings: The `[inference]` section.
        remote: Makes the backend of one worker reached over NATS, for
            tiers whose workers run as processes or on other nodes.

    Raises:
        ConfigError: If a tier needs `remote` and none is given.
        ValueError: If there are no tiers or the default tier is unknown.
    """

    def worker(tier: TierSettings) -> Backend:
        if not (tier.runs_processes or isinstance(tier.backend, RemoteBackendSettings)):
            return backend_from_settings(tier.backend)
        if remote is None:
            reason = "its workers are reached over NATS, which this pool has no access to"
            raise ConfigError(f"inference.tiers.{tier.name}", reason)
        return remote(tier)

    tiers = [
        TierSpec(
            name=tier.name,
            workers=[worker(tier) for _ in range(tier.workers)],
            queue_bound=tier.queue_bound,
            degrade_wait=tier.degrade_wait,
            breaker_threshold=tier.breaker_threshold,
            breaker_cooldown=tier.breaker_cooldown,
        )
        for tier in settings.tiers
    ]
    return InferencePool(tiers, default_tier=settings.default_tier or None)
