"""The inference pool as a held resource: it lives on the I/O loop, agents reach it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridges._seam import PoolClient

if TYPE_CHECKING:
    from bridges._loop import IoLoop
    from inference import InferencePool


class PoolResource:
    """A running pool, held by its child; its line in the tree is its tiers'."""

    def __init__(self, client: PoolClient) -> None:
        self.client = client

    @classmethod
    async def open(cls, make_pool: Callable[[], InferencePool], io: IoLoop) -> PoolResource:
        """Build a fresh pool (and its backends) off the loop: a backend may load a model.

        A thread cannot be cancelled: if the start gives up first, the pool
        it goes on to build is closed as soon as it is built.
        """
        building = asyncio.ensure_future(asyncio.to_thread(make_pool))
        try:
            pool = await asyncio.shield(building)
        except asyncio.CancelledError:
            building.add_done_callback(_close_built)
            raise
        return cls(PoolClient(pool, io))

    def describe(self) -> str:
        """Per tier: in flight / slots, queued, breaker."""
        stats = self.client.pool.statistics()
        return "; ".join(
            f"{t.name} ({t.backend} {t.model}) {t.in_flight}/{t.slots} busy, "
            f"{t.queued} queued, breaker {t.breaker}"
            for t in stats.tiers
        )

    async def close(self) -> None:
        """Answer what is queued, stop the workers, close the backends."""
        await self.client.pool.aclose()

    async def probe(self) -> str | None:
        """Why no request can be placed now, or None (readiness reads the breakers too)."""
        if all(t.breaker == "open" for t in self.client.pool.statistics().tiers):
            return "every model tier is out (breakers open)"
        return None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Never called: a pool on this loop is not lost, only its workers are."""


def _close_built(building: asyncio.Future[InferencePool]) -> None:
    if not building.cancelled() and building.exception() is None:
        task = asyncio.ensure_future(building.result().aclose())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)


# Closing tasks of pools built after their start gave up (kept from the GC).
_CLOSING: set[asyncio.Task[None]] = set()
