"""Node configuration: TOML decoded into frozen Structs, with environment overrides."""

from config._settings import (
    ENV_OVERRIDES,
    AgentSettings,
    BackoffSettings,
    EventSettings,
    NatsSettings,
    NodeSettings,
    PoolSettings,
    Settings,
    StateSettings,
    SupervisionSettings,
    decode,
    default_toml,
    load,
)

__all__ = [
    "ENV_OVERRIDES",
    "AgentSettings",
    "BackoffSettings",
    "EventSettings",
    "NatsSettings",
    "NodeSettings",
    "PoolSettings",
    "Settings",
    "StateSettings",
    "SupervisionSettings",
    "decode",
    "default_toml",
    "load",
]
