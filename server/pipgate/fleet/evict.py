"""Keeps the shared store under ``storage.max_size``: least recently used first, by the
access records every replica writes (a local hit counts as a use of the shared copy).

Every replica runs the loop; one at a time does the work, under the ``evictor`` lease,
so two replicas never delete the same files twice over. Each replica's own cache
directory keeps its own cap (``cache.max_size``, :mod:`pipgate.store.evict`).
"""

from __future__ import annotations

import asyncio
import logging

from pipgate.fleet.coordinator import Coordinator, Holder
from pipgate.metrics import Metrics
from pipgate.store.shared import SharedBlobs, StorageError

log = logging.getLogger("pipgate.fleet")

#: Seconds between two looks at the shared store's size.
INTERVAL = 60.0
#: Files removed per round trip.
BATCH = 64


class SharedEvictor:
    """Removes the fleet's least recently used files beyond the cap."""

    def __init__(
        self, shared: SharedBlobs, coordinator: Coordinator, max_size: int, metrics: Metrics
    ) -> None:
        self._shared = shared
        self._coordinator = coordinator
        self._max_size = max_size
        self._metrics = metrics

    async def run(self, interval: float = INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.once()
            except Exception as exc:  # the next round tries again
                log.warning("shared store eviction failed: %s", exc)

    async def once(self) -> int:
        """One round; returns how many files went."""
        if not self._max_size:
            return 0
        lease = await self._coordinator.acquire("evictor")
        if isinstance(lease, Holder):
            return 0
        removed = 0
        try:
            total = await self._coordinator.total_size()
            while total > self._max_size:
                oldest = await self._coordinator.oldest(BATCH)
                if not oldest:
                    break
                for sha256, size in oldest:
                    if total <= self._max_size:
                        break
                    try:
                        await self._shared.remove(sha256)
                    except StorageError as exc:
                        self._metrics.fleet_shared.labels(op="evict", result="error").inc()
                        log.warning("could not evict %s from the shared store: %s", sha256, exc)
                        return removed
                    await self._coordinator.forget(sha256)
                    self._metrics.fleet_shared.labels(op="evict", result="ok").inc()
                    total -= size
                    removed += 1
            if removed:
                log.info(
                    "evicted %d files from %s (cap %d bytes)",
                    removed,
                    self._shared.label,
                    self._max_size,
                )
        finally:
            await lease.release()
        return removed
