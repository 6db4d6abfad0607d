"""The cache's metadata index, kept in diskcache (SQLite; safe across processes).

Keys:
- ``page:<project>`` -> :class:`PageRecord` (validators, fetch time, status)
- ``model:<project>`` -> the cached :class:`~pipgate.simple.model.ProjectPage` as JSON
- ``blob:<sha256>`` -> :class:`BlobRecord` (what a blob is and whether it was verified)
- ``alias:<file key>`` -> sha256, for files whose upstream published no sha256
- ``root`` -> :class:`RootRecord` (the rendered ``/simple/`` list on disk)

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

    async def put_blob(self, sha256: str, record: BlobRecord) -> None:
        """Record a newly committed blob."""
        await self._set(f"blob:{sha256}", asdict(record))

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
