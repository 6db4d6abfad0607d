"""Offline: serve only what the cache holds, and say so.

:class:`CachedPages` stands in for an upstream's source: the pages the catalog holds, of
any age, and no fetch at all. :class:`CachedFilesOnly` wraps the routed source and
keeps, of each page, the files whose verified blob is in the cache, so an installer
only ever picks something that can be served. A project never seen, or a file never
fetched, is a 404 that says "offline: … not cached".
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from pipgate.links import file_key
from pipgate.pages import names_file
from pipgate.pages.cache import PageCache
from pipgate.pages.source import (
    FileOffer,
    NotOffered,
    Offers,
    PageSource,
    PageView,
    ProjectList,
)
from pipgate.simple.model import DistFile, ProjectEntry
from pipgate.store.blobs import BlobStore, is_sha256
from pipgate.store.catalog import Catalog

#: Why a page or file is missing while offline.
NOT_CACHED = "offline: {what} is not cached here"
#: How long a "which files are cached" answer is reused (files can be evicted).
CACHED_MEMO_SECONDS = 5.0
CACHED_MEMO_ENTRIES = 1024


class CachedPages:
    """The page source of one upstream while offline: cached pages only."""

    def __init__(
        self, name: str, catalog: Catalog, lists_dir: Path, *, synthesize_upload_time: bool
    ) -> None:
        self.name = name
        self._catalog = catalog
        self._cache = PageCache(name, catalog, synthesize_upload_time)
        self._lists_dir = lists_dir

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        record = await self._cache.record(name)
        if record is not None:
            view = await self._cache.view(name, record, "hit")
            if view is not None:
                return view
        return PageView(
            page=None,
            digest="",
            result="hit",
            age=0.0,
            missing=NOT_CACHED.format(what=f"project {name}"),
        )

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        """The projects this cache has pages of (nothing else could be installed)."""
        return await asyncio.to_thread(self._list)

    def _list(self) -> ProjectList:
        self._lists_dir.mkdir(parents=True, exist_ok=True)
        names = self._catalog.cached_projects(self.name)
        part = self._lists_dir / f"cached-{uuid.uuid4().hex}.tmp"
        try:
            digest, count = names_file.write_sorted((ProjectEntry(n) for n in names), part)
            path = self._lists_dir / f"names-cached-{digest[:32]}"
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)
        names_file.remove_old(self._lists_dir, path)
        return ProjectList(path=path, digest=digest, count=count, age=0.0, result="hit")

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        return (await self.project(name)).offer(key, filename)

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Cached:
    page_digest: str
    view: PageView
    #: (URL key, filename) of files on the page that are not cached.
    absent: frozenset[tuple[str, str]]
    checked_at: float


class CachedFilesOnly:
    """A page filter keeping the files that are in the cache (offline mode)."""

    def __init__(self, inner: PageSource, blobs: BlobStore, catalog: Catalog) -> None:
        self._inner = inner
        self._blobs = blobs
        self._catalog = catalog
        self._memo: OrderedDict[str, _Cached] = OrderedDict()

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        view, _ = await self._project(name, revalidate)
        return view

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        return await self._inner.project_list(revalidate=revalidate)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        view, cached = await self._project(name, False)
        if cached is not None and (key, filename) in cached.absent:
            raise NotOffered(NOT_CACHED.format(what=filename))
        return view.offer(key, filename)

    async def close(self) -> None:
        await self._inner.close()

    async def _project(self, name: str, revalidate: bool) -> tuple[PageView, _Cached | None]:
        view = await self._inner.project(name, revalidate=revalidate)
        if view.page is None:
            return view, None
        memo = self._memo.get(view.digest)
        if memo is None or time.monotonic() - memo.checked_at > CACHED_MEMO_SECONDS:
            memo = await asyncio.to_thread(self._filter, view)
            self._memo[view.digest] = memo
            while len(self._memo) > CACHED_MEMO_ENTRIES:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(view.digest)
        if memo.view.digest == view.digest:
            return view, memo
        shown = replace(view, page=memo.view.page, digest=memo.view.digest, offers=memo.view.offers)
        return shown, memo

    def _filter(self, view: PageView) -> _Cached:
        """Which of the page's files are cached (blocking: one ``stat`` each)."""
        assert view.page is not None
        kept: list[DistFile] = []
        absent: set[tuple[str, str]] = set()
        for dist in view.page.files:
            key = file_key(dist)
            if self._is_cached(dist, key):
                kept.append(dist if self._has_metadata(dist, key) else _no_metadata(dist))
            else:
                absent.add((key, dist.filename))
        if (
            not absent
            and len(kept) == len(view.page.files)
            and all(a is b for a, b in zip(kept, view.page.files, strict=True))
        ):
            return _Cached(view.digest, view, frozenset(), time.monotonic())
        page = replace(view.page, files=tuple(kept), versions=None)
        marks = ",".join(sorted(k for k, _ in absent))
        digest = hashlib.sha256(f"{view.digest}|cached|{marks}".encode()).hexdigest()
        offers = view.offers.for_page(page) if view.offers is not None else Offers(page, "")
        shown = replace(view, page=page, digest=digest, offers=offers)
        return _Cached(view.digest, shown, frozenset(absent), time.monotonic())

    def _is_cached(self, dist: DistFile, key: str) -> bool:
        sha = dist.sha256 if dist.sha256 and is_sha256(dist.sha256) else None
        if sha is None:
            sha = self._catalog.sha256_for(key)
        return sha is not None and self._blobs.exists(sha)

    def _has_metadata(self, dist: DistFile, key: str) -> bool:
        """Whether a ``.metadata`` the page advertises can be served offline: cached, or
        derivable from the cached wheel."""
        if not dist.has_metadata or dist.filename.endswith(".whl"):
            return True
        sha = self._catalog.sha256_for(f"meta:{key}")
        return sha is not None and self._blobs.exists(sha)


def _no_metadata(dist: DistFile) -> DistFile:
    return replace(dist, core_metadata=None)
