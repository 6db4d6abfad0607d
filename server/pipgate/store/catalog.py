"""The catalog: what the cache holds besides the blobs, in diskcache (SQLite; safe
across processes).

Keys (pages and lists belong to one page source, named by its upstream; blobs are
shared by all):
- ``page/<source>/<project>`` -> :class:`PageRecord` (validators, fetch time, status)
- ``model/<source>/<project>`` -> the cached :class:`~pipgate.simple.model.ProjectPage`
  as JSON
- ``list/<source>`` -> :class:`ListRecord` (that upstream's project list on disk)
- ``seen/<source>/<project>`` -> filename -> when pipgate first saw the file
- ``blob:<sha256>`` -> :class:`BlobRecord` (what a blob is and whether it was verified)
- ``alias:<file key>`` -> sha256, for files whose upstream published no sha256
- ``atime:<sha256>`` -> last time the blob was served (LRU eviction)
- ``total_size``, ``total_files`` -> totals of all recorded blobs (atomic counters
  shared by workers)

The methods are async and run diskcache in a worker thread, so the event loop never
waits on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diskcache

log = logging.getLogger("pipgate.catalog")


#: diskcache's defaults give every SQLite connection (one per thread that touches the
#: catalog) a 32 MiB page cache and a 64 MiB memory map, which fill as the catalog grows:
#: a worker grew ~80 MiB in a 10-minute soak. Hot records are memoised above SQLite, so
#: a 1 MiB page cache and plain reads cost the warm path nothing.
SQLITE_MEMORY = {"sqlite_cache_size": 256, "sqlite_mmap_size": 0}
#: ... and no culling: pipgate evicts blobs itself and bounds remembered 404s by count,
#: while diskcache's cull costs every write two more queries (expired rows, volume).
#: An expired 404 still reads as absent.
SQLITE_SETTINGS = {
    **SQLITE_MEMORY,
    "size_limit": 1 << 40,
    "cull_limit": 0,
    "eviction_policy": "none",
}


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
class ListRecord:
    """One upstream's cached project list (its sorted names file lives in ``lists/``)."""

    fetched_at: float
    digest: str
    count: int
    etag: str | None = None
    last_modified: str | None = None


#: Key prefixes of the single-upstream layout before page sources had names.
LEGACY_PREFIXES = ("page:", "model:")
LEGACY_KEYS = ("root",)


#: Tag of remembered upstream 404s (pruned as a group, see :meth:`Catalog.put_page_now`).
NEGATIVE_TAG = "negative"


class Catalog:
    """Async facade over one diskcache ``Cache`` in ``<cache>/catalog``.

    Remembered 404s are bounded: each expires after ``negative_retention`` seconds, and
    beyond ``max_negative`` of them all are forgotten at once (a scan of random names
    costs one record each; forgetting one costs one upstream request later).
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        max_negative: int = 100_000,
        negative_retention: float = 86400.0,
    ) -> None:
        self._max_negative = max_negative
        self._negative_retention = negative_retention
        directory = cache_dir / "catalog"
        legacy = cache_dir / "index"
        if not directory.exists() and legacy.is_dir():
            # Caches made before the rename: move, never rebuild (that would re-hash
            # every blob at start-up).
            with contextlib.suppress(OSError):
                legacy.rename(directory)
        self._cache = diskcache.Cache(str(directory), **SQLITE_SETTINGS)

    def close(self) -> None:
        """Close the SQLite connection."""
        self._cache.close()

    async def _get(self, key: str) -> Any:
        return await asyncio.to_thread(self._cache.get, key)

    async def _set(self, key: str, value: Any) -> None:
        await asyncio.to_thread(self._cache.set, key, value)

    # pages
    async def get_page(self, source: str, project: str) -> PageRecord | None:
        """The page record of a project in one source, if any."""
        raw = await self._get(f"page/{source}/{project}")
        return PageRecord(**raw) if raw else None

    async def get_model(self, source: str, project: str) -> bytes | None:
        """The cached model JSON of a project page, if any."""
        value = await self._get(f"model/{source}/{project}")
        return bytes(value) if value is not None else None

    async def put_page(
        self, source: str, project: str, record: PageRecord, model: bytes | None
    ) -> None:
        """Store a page record and, when given, its model (both in one transaction)."""
        await asyncio.to_thread(self.put_page_now, source, project, record, model)

    def put_page_now(
        self, source: str, project: str, record: PageRecord, model: bytes | None
    ) -> None:
        """Blocking :meth:`put_page`."""
        key = f"page/{source}/{project}"
        if record.status != 200:
            self._put_negative(key, record)
            return
        with self._cache.transact():
            if model is not None:
                self._cache.set(f"model/{source}/{project}", model)
            self._cache.set(key, asdict(record))

    def _put_negative(self, key: str, record: PageRecord) -> None:
        with self._cache.transact():
            previous = self._cache.get(key, tag=True)
            was_negative = isinstance(previous, tuple) and previous[1] == NEGATIVE_TAG
            self._cache.set(
                key, asdict(record), expire=self._negative_retention, tag=NEGATIVE_TAG
            )
            count = self._cache.get("negative_count", 0) if was_negative else self._cache.incr(
                "negative_count"
            )
        if count > self._max_negative:
            forgotten = self._cache.evict(NEGATIVE_TAG)
            self._cache.set("negative_count", 0)
            log.warning(
                "forgot %d remembered upstream 404s (over limits.max_negative_entries %d)",
                forgotten,
                self._max_negative,
            )

    def negative_entries(self) -> int:
        """About how many upstream 404s are remembered (expired ones may still count)."""
        return int(self._cache.get("negative_count", 0))

    def get_page_now(self, source: str, project: str) -> PageRecord | None:
        """Blocking :meth:`get_page`."""
        raw = self._cache.get(f"page/{source}/{project}")
        return PageRecord(**raw) if raw else None

    def forget_page_now(self, source: str, project: str) -> bool:
        """Drop the cached page (or remembered 404) of ``project`` in ``source``, so the
        next request asks upstream (blocking); whether there was one. First-seen times
        stay: they are the cooldown's clock."""
        with self._cache.transact():
            found = self._cache.delete(f"page/{source}/{project}")
            self._cache.delete(f"model/{source}/{project}")
        return bool(found)

    async def first_seen(
        self, source: str, project: str, filenames: list[str], now: float
    ) -> dict[str, float]:
        """When pipgate first saw each file of a project (in one source), recording
        ``now`` for those it had not seen: the cooldown clock of upstreams that publish
        no upload time (never earlier than the real upload)."""

        return await asyncio.to_thread(self.first_seen_now, source, project, filenames, now)

    def first_seen_now(
        self, source: str, project: str, filenames: list[str], now: float
    ) -> dict[str, float]:
        """Blocking :meth:`first_seen`."""
        key = f"seen/{source}/{project}"
        known = self._cache.get(key) or {}
        if all(f in known for f in filenames):  # a page seen before: no write lock
            return dict(known)
        with self._cache.transact():
            seen = dict(self._cache.get(key) or {})
            missing = [f for f in filenames if f not in seen]
            if missing:
                seen.update(dict.fromkeys(missing, now))
                self._cache.set(key, seen)
        return seen

    def cached_projects(self, source: str) -> list[str]:
        """Projects with a cached page in ``source`` (blocking; the offline list)."""
        prefix = f"page/{source}/"
        names = []
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith(prefix):
                raw = self._cache.get(key)
                if raw and raw.get("status") == 200:
                    names.append(key[len(prefix) :])
        return names

    def drop_legacy_keys(self) -> int:
        """Remove page records of the old unnamed layout (blocking; start-up)."""
        removed = 0
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and (key.startswith(LEGACY_PREFIXES) or key in LEGACY_KEYS):
                removed += bool(self._cache.delete(key))
        return removed

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
        return await asyncio.to_thread(self.record_blob_now, sha256, record)

    def record_blob_now(self, sha256: str, record: BlobRecord) -> bool:
        """Blocking :meth:`record_blob`."""
        with self._cache.transact():
            known = self._cache.get(f"blob:{sha256}")
            self._cache.set(f"blob:{sha256}", asdict(record))
            self._cache.set(f"atime:{sha256}", record.stored_at)
            if known is None:
                self._cache.incr("total_size", record.size, default=0)
                self._cache.incr("total_files", 1, default=0)
                return True
            return False

    async def touch(self, sha256: str, when: float) -> None:
        """Remember that a blob was served (for least-recently-used eviction)."""
        await self._set(f"atime:{sha256}", when)

    async def total_size(self) -> int:
        """Bytes of all recorded blobs."""
        return int(await self._get("total_size") or 0)

    async def totals(self) -> tuple[int, int]:
        """``(bytes, files)`` of all recorded blobs."""
        return await asyncio.to_thread(self.totals_now)

    def totals_now(self) -> tuple[int, int]:
        """Blocking :meth:`totals`."""
        return (
            int(self._cache.get("total_size", 0) or 0),
            int(self._cache.get("total_files", 0) or 0),
        )

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

    def sha256_for(self, key: str) -> str | None:
        """The sha256 a file key names: the key itself, or its alias (blocking: the
        hot path of cache hits runs it in one worker-thread hop with the other
        look-ups)."""
        if len(key) == 64:
            return key
        value = self._cache.get(f"alias:{key}")
        return str(value) if value else None

    def blob_record(self, sha256: str) -> BlobRecord | None:
        """Blocking :meth:`get_blob`."""
        raw = self._cache.get(f"blob:{sha256}")
        return BlobRecord(**raw) if raw else None

    async def get_alias(self, key: str) -> str | None:
        """The sha256 stored for a non-sha256 file key."""
        value = await self._get(f"alias:{key}")
        return str(value) if value else None

    def put_alias_now(self, key: str, sha256: str) -> None:
        """Remember the sha256 of a file known by another key (blocking)."""
        self._cache.set(f"alias:{key}", sha256)

    # project lists
    async def get_list(self, source: str) -> ListRecord | None:
        """The record of one source's cached project list, if any."""
        raw = await self._get(f"list/{source}")
        return ListRecord(**raw) if raw else None

    async def put_list(self, source: str, record: ListRecord) -> None:
        """Replace one source's project list record."""
        await self._set(f"list/{source}", asdict(record))
