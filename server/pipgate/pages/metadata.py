"""PEP 658 metadata for every cached wheel, as a page filter.

A wheel whose upstream advertises no ``core-metadata`` gets it on pipgate's pages once
pipgate has its METADATA (extracted from the cached wheel by
:class:`~pipgate.files.metadata.DerivedMetadata`), with the right sha256, in HTML
(``data-core-metadata`` and ``data-dist-info-metadata``) and JSON alike, so pip, uv
and poetry resolve by reading small ``.metadata`` files instead of whole wheels.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from pipgate.files.metadata import DerivedMetadata
from pipgate.links import file_key
from pipgate.pages.source import FileOffer, Offers, PageSource, PageView, ProjectList
from pipgate.simple.model import DistFile

#: Wheels whose metadata is extracted while one page is prepared (bounds its latency).
DERIVE_PER_PAGE = 16
#: How long an answer is reused before new metadata (from other workers) is looked for.
MEMO_SECONDS = 5.0
MEMO_ENTRIES = 1024


@dataclass(frozen=True)
class _Injected:
    view: PageView
    generation: int
    made_at: float


class MetadataInjector:
    """Advertises the metadata pipgate has, or can derive, for a page's wheels."""

    def __init__(self, inner: PageSource, derived: DerivedMetadata) -> None:
        self._inner = inner
        self._derived = derived
        self._memo: OrderedDict[str, _Injected] = OrderedDict()

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        view = await self._inner.project(name, revalidate=revalidate)
        if view.page is None:
            return view
        memo = self._memo.get(view.digest)
        if (
            memo is None
            or memo.generation != self._derived.generation
            or time.monotonic() - memo.made_at > MEMO_SECONDS
        ):
            if not any(_needs_metadata(dist) for dist in view.page.files):
                return view  # every wheel's metadata is advertised already
            memo = await asyncio.to_thread(self._inject, view)
            self._memo[view.digest] = memo
            while len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(view.digest)
        if memo.view.digest == view.digest:
            return view  # nothing injected
        # The memo holds what was injected; freshness (result, age) is the current view's.
        return replace(view, page=memo.view.page, digest=memo.view.digest, offers=memo.view.offers)

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        return await self._inner.project_list(revalidate=revalidate)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        await self._inner.find_file(name, key, filename)  # the inner stages' refusals
        return (await self.project(name)).offer(key, filename)

    async def close(self) -> None:
        await self._inner.close()

    def _inject(self, view: PageView) -> _Injected:
        """The view with ``core-metadata`` on the wheels that have it here (blocking)."""
        assert view.page is not None
        budget = DERIVE_PER_PAGE
        injected: list[tuple[str, str]] = []
        files = []
        for dist in view.page.files:
            if not _needs_metadata(dist):
                files.append(dist)
                continue
            key = file_key(dist)
            sha = self._derived.cached(key)
            if sha is None and budget > 0:
                budget -= 1
                sha = self._derived.derive(view.page.name, dist, key)
            if sha is None:
                files.append(dist)
                continue
            files.append(replace(dist, core_metadata={"sha256": sha}))
            injected.append((key, sha))
        generation = self._derived.generation
        if not injected:
            return _Injected(view, generation, time.monotonic())
        page = replace(view.page, files=tuple(files))
        marks = ",".join(f"{k}:{s}" for k, s in injected)
        digest = hashlib.sha256(f"{view.digest}|metadata|{marks}".encode()).hexdigest()
        offers = view.offers.for_page(page) if view.offers is not None else Offers(page, "")
        shown = replace(view, page=page, digest=digest, offers=offers)
        return _Injected(shown, generation, time.monotonic())


def _needs_metadata(dist: DistFile) -> bool:
    """A wheel whose upstream advertises no metadata file."""
    return not dist.has_metadata and dist.filename.endswith(".whl")
