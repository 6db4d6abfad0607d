"""The parsed pages of one page source, as the catalog and this worker's memory hold
them: used by the upstream source (which also fetches) and the cache-only one."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from pipgate.pages.source import Offers, PageView
from pipgate.simple.model import ProjectPage
from pipgate.store.catalog import Catalog, PageRecord

#: Parsed pages kept in memory, by content digest (big projects parse in ~50 ms).
MODEL_CACHE_SIZE = 256
#: How long this worker trusts a page record it read, before reading it again (other
#: workers may have refreshed it); a fresh record stays valid for the page TTL anyway.
RECORD_MEMO_SECONDS = 2.0
RECORD_MEMO_ENTRIES = 10_000


class PageCache:
    """Page records and parsed models of one source (``name``), memoised."""

    def __init__(self, name: str, catalog: Catalog, synthesize_upload_time: bool) -> None:
        self.name = name
        self._catalog = catalog
        self._synthesize = synthesize_upload_time
        self._models: OrderedDict[str, _Memo] = OrderedDict()
        self._records: dict[str, tuple[PageRecord, float]] = {}

    async def record(self, name: str) -> PageRecord | None:
        memo = self._records.get(name)
        if memo is not None and time.monotonic() - memo[1] < RECORD_MEMO_SECONDS:
            return memo[0]
        record = await self._catalog.get_page(self.name, name)
        if record is not None:
            self.remember_record(name, record)
        return record

    def remember_record(self, name: str, record: PageRecord) -> None:
        now = time.monotonic()
        # Records are reused for seconds: the oldest expired ones go on every insert.
        for old in list(itertools.islice(self._records, 8)):
            if now - self._records[old][1] <= RECORD_MEMO_SECONDS:
                break
            del self._records[old]
        if len(self._records) >= RECORD_MEMO_ENTRIES:
            self._records.clear()
        self._records.pop(name, None)  # to the end: oldest stay first
        self._records[name] = (record, now)

    async def view(self, name: str, record: PageRecord, result: str) -> PageView | None:
        if record.status != 200:
            return PageView(page=None, digest="", result=result, age=record.age())
        memo = self._models.get(record.digest)
        if memo is None:
            model = await self._catalog.get_model(self.name, name)
            if model is None or hashlib.sha256(model).hexdigest() != record.digest:
                return None
            page = await asyncio.to_thread(ProjectPage.from_json, model)
            memo = await self.remember(record.digest, page)
        else:
            self._models.move_to_end(record.digest)
        return memo.view(result, record.age())

    def record_first_seen(self, page: ProjectPage) -> dict[str, float]:
        """Record when files without an upload time were first seen, returning every
        such time (blocking: a fresh page does it in its parse-and-store hop)."""
        unstamped = [f.filename for f in page.files if not f.upload_time]
        if not unstamped:  # the policy reads first-seen times only for these
            return {}
        return self._catalog.first_seen_now(self.name, page.name, unstamped, time.time())

    async def remember(
        self, digest: str, page: ProjectPage, seen: dict[str, float] | None = None
    ) -> _Memo:
        """Keep a parsed page with its offers and first-seen times (recording the files
        seen for the first time now, unless ``seen`` says what :meth:`record_first_seen`
        returned)."""
        unstamped = [f.filename for f in page.files if not f.upload_time]
        if seen is None:
            seen = await asyncio.to_thread(self.record_first_seen, page) if unstamped else {}
        served, served_digest = page, digest
        if self._synthesize and unstamped:
            served = replace(
                page,
                files=tuple(
                    replace(f, upload_time=_iso(seen[f.filename]))
                    if not f.upload_time and f.filename in seen
                    else f
                    for f in page.files
                ),
            )
            served_digest = hashlib.sha256(f"{digest}|synthesized".encode()).hexdigest()
        memo = _Memo(served, served_digest, Offers(served, self.name), seen, self.name)
        self._models[digest] = memo
        self._models.move_to_end(digest)
        while len(self._models) > MODEL_CACHE_SIZE:
            self._models.popitem(last=False)
        return memo


@dataclass(frozen=True)
class _Memo:
    """A parsed page as served, kept by content digest."""

    page: ProjectPage
    digest: str
    offers: Offers
    first_seen: dict[str, float]
    upstream: str

    def view(self, result: str, age: float) -> PageView:
        return PageView(
            page=self.page,
            digest=self.digest,
            result=result,
            age=age,
            upstream=self.upstream,
            offers=self.offers,
            first_seen=self.first_seen,
        )


def _iso(timestamp: float) -> str:
    """PEP 700 ``upload-time``: ISO 8601 in UTC with a ``Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
