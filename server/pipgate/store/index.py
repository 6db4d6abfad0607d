"""The cache's metadata index, kept in diskcache (SQLite; safe across processes).

Keys:
- ``page:<project>`` -> :class:`PageRecord` (validators, fetch time, status)
- ``model:<project>`` -> the cached :class:`~pipgate.simple.model.ProjectPage` as JSON
- ``blob:<sha256>`` -> :class:`BlobRecord` (what a blob is and whether it was verified)
- ``alias:<file key>`` -> sha256, for files whose upstream published no sha256
- ``root`` -> :class:`RootRecord` (the rendered ``/simple/`` list on disk)
- ``atime:<sha256>`` -> last time the blob was served (LRU eviction)
- ``total_size`` -> bytes of all recorded blobs (an atomic counter shared by workers)

The methods are async and run diskcache in a worker thread, so the event loop never
waits on SQLite.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diskcache


@dataclass(frozen=True)
class PageRecord:
    """What pipgate knows about one cached project page."""

    #: 200 (a page is cached under ``model:``) or 404 (negative entry).
    status: int
    fetched_at: float
    #: sha256 of the cached model JSON: changes exactly when the page content changes.
    digest: str = ""
    etag: str | None = None
    last_modified: str | None = None
    #: PEP 792 status, so file requests can check quarantine without loading the page.
    project_status: str = "active"

    def age(self, now: float | None = None) -> float:
        """Seconds since upstream last confirmed this record."""
        return max(0.0, (now if now is not None else time.time()) - self.fetched_at)


@dataclass(frozen=True)
class BlobRecord:
    """Provenance of a stored blob."""

    project: str
    filename: str
    size: int
    verified: bool
    stored_at: float


@dataclass(frozen=True)
class RootRecord:
    """The cached root project list (rendered files live in ``pages/``)."""

    fetched_at: float
    digest: str
    count: int
    etag: str | None = None
    last_modified: str | None = None


class Index:
    """Async facade over one diskcache ``Cache`` in ``<cache>/index``."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache = diskcache.Cache(str(cache_dir / "index"), size_limit=1 << 40)

    def close(self) -> None:
        """Close the SQLite connection."""
        self._cache.close()

    async def _get(self, key: str) -> Any:
        return await asyncio.to_thread(self._cache.get, key)

    async def _set(self, key: str, value: Any) -> None:
        await asyncio.to_thread(self._cache.set, key, value)

    # pages
    async def get_page(self, project: str) -> PageRecord | None:
        """The page record of a project, if any."""
        raw = await self._get(f"page:{project}")
        return PageRecord(**raw) if raw else None

    async def get_model(self, project: str) -> bytes | None:
        """The cached model JSON of a project page, if any."""
        value = await self._get(f"model:{project}")
        return bytes(value) if value is not None else None

    async def put_page(self, project: str, record: PageRecord, model: bytes | None) -> None:
        """Store a page record and, when given, its model (both in one transaction)."""

        def write() -> None:
            with self._cache.transact():
                if model is not None:
                    self._cache.set(f"model:{project}", model)
                self._cache.set(f"page:{project}", asdict(record))

        await asyncio.to_thread(write)

    # blobs
    async def get_blob(self, sha256: str) -> BlobRecord | None:
        """The record of a stored blob, if any."""
        raw = await self._get(f"blob:{sha256}")
        return BlobRecord(**raw) if raw else None

    async def remove_blob(self, sha256: str, size: int) -> None:
        """Forget a blob (after it was deleted) and subtract its size."""
        await asyncio.to_thread(self.forget_blob, sha256, size)

    def forget_blob(self, sha256: str, size: int) -> None:
        """Blocking :meth:`remove_blob` (for eviction and repair threads)."""
        with self._cache.transact():
            if self._cache.delete(f"blob:{sha256}"):
                self._cache.incr("total_size", -size, default=0)
                self._cache.incr("total_files", -1, default=0)
            self._cache.delete(f"atime:{sha256}")

    async def record_blob(self, sha256: str, record: BlobRecord) -> bool:
        """Record a committed blob and add its size, unless it was already recorded.

        Returns whether it was new.
        """

        def write() -> bool:
            with self._cache.transact():
                known = self._cache.get(f"blob:{sha256}")
                self._cache.set(f"blob:{sha256}", asdict(record))
                self._cache.set(f"atime:{sha256}", record.stored_at)
                if known is None:
                    self._cache.incr("total_size", record.size, default=0)
                    self._cache.incr("total_files", 1, default=0)
                    return True
                return False

        return await asyncio.to_thread(write)

    async def touch(self, sha256: str, when: float) -> None:
        """Remember that a blob was served (for least-recently-used eviction)."""
        await self._set(f"atime:{sha256}", when)

    async def total_size(self) -> int:
        """Bytes of all recorded blobs."""
        return int(await self._get("total_size") or 0)

    async def totals(self) -> tuple[int, int]:
        """``(bytes, files)`` of all recorded blobs."""

        def read() -> tuple[int, int]:
            return (
                int(self._cache.get("total_size", 0) or 0),
                int(self._cache.get("total_files", 0) or 0),
            )

        return await asyncio.to_thread(read)

    def blob_entries(self) -> list[tuple[str, BlobRecord, float]]:
        """Every recorded blob with its last access time (blocking; for a worker thread)."""
        entries = []
        for key in list(self._cache.iterkeys()):
            if not isinstance(key, str) or not key.startswith("blob:"):
                continue
            sha = key[5:]
            raw = self._cache.get(key)
            if not raw:
                continue
            atime = self._cache.get(f"atime:{sha}", raw.get("stored_at", 0.0))
            entries.append((sha, BlobRecord(**raw), float(atime)))
        return entries

    def set_totals(self, size: int, files: int) -> None:
        """Reset the size and file counters (blocking; reconciliation at start-up)."""
        with self._cache.transact():
            self._cache.set("total_size", size)
            self._cache.set("total_files", files)

    def total_size_now(self) -> int:
        """Blocking :meth:`total_size`."""
        return int(self._cache.get("total_size", 0) or 0)

    def drop_blob_record(self, sha256: str) -> None:
        """Forget a blob record without touching the size counter (blocking)."""
        self._cache.delete(f"blob:{sha256}")
        self._cache.delete(f"atime:{sha256}")

    def put_blob_record(self, sha256: str, record: BlobRecord) -> None:
        """Write a blob record (blocking; reconciliation)."""
        self._cache.set(f"blob:{sha256}", asdict(record))

    def cached_blob(self, key: str) -> tuple[str, BlobRecord] | None:
        """The sha256 and record of the blob a file key names (blocking: the hot path
        of cache hits runs it in one worker-thread hop with the other look-ups)."""
        sha = key if len(key) == 64 else self._cache.get(f"alias:{key}")
        if not sha:
            return None
        raw = self._cache.get(f"blob:{sha}")
        return (str(sha), BlobRecord(**raw)) if raw else None

    def project_status(self, project: str) -> str | None:
        """The PEP 792 status of a cached page, if the page is cached (blocking)."""
        raw = self._cache.get(f"page:{project}")
        return str(raw.get("project_status", "active")) if raw else None

    async def get_alias(self, key: str) -> str | None:
        """The sha256 stored for a non-sha256 file key."""
        value = await self._get(f"alias:{key}")
        return str(value) if value else None

    async def put_alias(self, key: str, sha256: str) -> None:
        """Remember the sha256 of a file known by another key."""
        await self._set(f"alias:{key}", sha256)

    # root
    async def get_root(self) -> RootRecord | None:
        """The record of the cached root list, if any."""
        raw = await self._get("root")
        return RootRecord(**raw) if raw else None

    async def put_root(self, record: RootRecord) -> None:
        """Replace the root list record."""
        await self._set("root", asdict(record))
