"""The inference pool: model tiers, deadline-aware admission, load shedding."""

from inference._backend import Backend, Emit, Generation, prompt_text
from inference._breaker import Breaker, BreakerState
from inference._pool import (
    InferencePool,
    PoolFull,
    PoolStatistics,
    TierSpec,
    TierStatistics,
)
from inference._scripted import Rule, ScriptedBackend

__all__ = [
    "Backend",
    "Breaker",
    "BreakerState",
    "Emit",
    "Generation",
    "InferencePool",
    "PoolFull",
    "PoolStatistics",
    "Rule",
    "ScriptedBackend",
    "TierSpec",
    "TierStatistics",
    "prompt_text",
]
