"""The inference pool: model tiers, deadline-aware admission, load shedding."""

from inference._backend import Backend, Emit, Generation, prompt_text
from inference._breaker import Breaker, BreakerState
from inference._pool import InferencePool, PoolFull, PoolStatistics
from inference._registry import backend_from_settings, check_available
from inference._scripted import Rule, ScriptedBackend, scripted_from_settings
from inference._settings import pool_from_settings
from inference._tier import TierSpec, TierStatistics

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
    "backend_from_settings",
    "check_available",
    "pool_from_settings",
    "prompt_text",
    "scripted_from_settings",
]
