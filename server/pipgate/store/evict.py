"""Keep the cache under ``cache.max_size`` by removing least-recently-used files.

Eviction runs after a commit pushes the total over the limit and removes files down to
90 % of it (so it does not run again on the next commit). A file being sent holds its
use lock shared; eviction only removes a blob whose use lock it can take exclusively,
so a file being read is never evicted, and files written in the last minute (whose
downloads may still have readers) are skipped. One worker evicts at a time
(``locks/evict.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from pipgate.metrics import Metrics
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import Catalog
from pipgate.store.locks import try_exclusive

log = logging.getLogger("pipgate.evict")

#: Evict down to this fraction of ``max_size``.
LOW_WATERMARK = 0.9
#: Files younger than this are not evicted (their download may still have readers).
MIN_AGE = 60.0


@dataclass(frozen=True)
class EvictionResult:
    """What one pass removed."""

    files: int
    bytes: int


def remove_unused(blobs: BlobStore, catalog: Catalog, sha256: str, size: int) -> bool:
    """Delete a blob and its record unless it is being sent right now (blocking);
    returns whether it went."""
    use = try_exclusive(blobs.use_lock_path(sha256))
    if use is None:
        return False
    try:
        blobs.remove(sha256)
        catalog.forget_blob(sha256, size)
    finally:
        os.close(use)
    with contextlib.suppress(FileNotFoundError):
        blobs.use_lock_path(sha256).unlink()
    return True


class Evictor:
    """Runs eviction passes for one worker."""

    def __init__(self, catalog: Catalog, blobs: BlobStore, max_size: int, metrics: Metrics) -> None:
        self._catalog = catalog
        self._blobs = blobs
        self._max_size = max_size
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._again = False

    async def update_gauges(self) -> int:
        """Refresh the size gauges; returns the total size."""
        size, files = await self._catalog.totals()
        self._gauges(size, files)
        return size

    def _gauges(self, size: int, files: int) -> None:
        self._metrics.cache_size.set(size)
        self._metrics.cache_files.set(files)

    def committed(self, totals: tuple[int, int]) -> None:
        """A commit was recorded and the catalog's totals read in the same hop: the
        gauges take them, and a pass runs only when they are over ``max_size``."""
        size, files = totals
        self._gauges(size, files)
        if self._max_size and size > self._max_size:
            self.request()

    def request(self) -> None:
        """Check the size soon (after a commit); at most one pass runs per worker."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._check(), name="evict")

    async def _check(self) -> None:
        while True:
            self._again = False
            try:
                total = await self.update_gauges()
                if self._max_size and total > self._max_size:
                    result = await asyncio.to_thread(self.evict_now)
                    if result.files:
                        log.info(
                            "evicted %d files (%d bytes) to stay under %d bytes",
                            result.files,
                            result.bytes,
                            self._max_size,
                        )
                    await self.update_gauges()
            except Exception:
                log.exception("eviction pass failed")
            if not self._again:
                return

    def evict_now(self, *, now: float | None = None) -> EvictionResult:
        """One blocking eviction pass (for a worker thread)."""
        guard = try_exclusive(self._blobs.locks / "evict.lock")
        if guard is None:
            return EvictionResult(0, 0)  # another worker is evicting
        try:
            now = time.time() if now is None else now
            total = self._catalog.total_size_now()
            target = int(self._max_size * LOW_WATERMARK)
            removed = freed = 0
            for sha, record, _atime in sorted(self._catalog.blob_entries(), key=lambda e: e[2]):
                if total <= target:
                    break
                if now - record.stored_at < MIN_AGE:
                    continue
                if not remove_unused(self._blobs, self._catalog, sha, record.size):
                    continue  # being sent right now
                total -= record.size
                removed += 1
                freed += record.size
                self._metrics.cache_evictions.inc()
            return EvictionResult(removed, freed)
        finally:
            os.close(guard)

    async def close(self) -> None:
        """Wait out a running pass (shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
