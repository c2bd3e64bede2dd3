"""Build the pool's tiers from settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from inference._pool import InferencePool
from inference._registry import backend_from_settings
from inference._tier import TierSpec
from messages import ConfigError

if TYPE_CHECKING:
    from config import InferenceSettings, TierSettings
    from inference._backend import Backend

RemoteFactory = Callable[["TierSettings"], "Backend"]


def pool_from_settings(
    settings: InferenceSettings, *, remote: RemoteFactory | None = None
) -> InferencePool:
    """An inference pool with fresh backends for each tier's workers.

    Args:
        settings: The `[inference]` section.
        remote: Makes the backend of one worker reached over NATS, for
            tiers whose workers run as processes or on other nodes.

    Raises:
        ConfigError: If a tier needs `remote` and none is given, or its
            backend cannot run in this process.
        ValueError: If there are no tiers or the default tier is unknown.
    """

    def worker(index: int, tier: TierSettings) -> Backend:
        if not tier.reached_over_nats:
            return backend_from_settings(tier.backend, key=f"inference.tiers[{index}].backend")
        if remote is None:
            reason = "its workers are reached over NATS, which this pool has no access to"
            raise ConfigError(f"inference.tiers.{tier.name}", reason)
        return remote(tier)

    tiers = [
        TierSpec(
            name=tier.name,
            workers=[worker(index, tier) for _ in range(tier.workers)],
            queue_bound=tier.queue_bound,
            degrade_wait=tier.degrade_wait,
            breaker_threshold=tier.breaker_threshold,
            breaker_cooldown=tier.breaker_cooldown,
        )
        for index, tier in enumerate(settings.tiers)
    ]
    return InferencePool(tiers, default_tier=settings.default_tier or None)
