"""The inference pool: model tiers, admission and load shedding (not built yet)."""

__all__: list[str] = []
