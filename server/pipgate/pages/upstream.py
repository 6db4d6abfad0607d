"""The page source of one upstream: fetch, parse once, cache with a TTL, serve stale.

Freshness rules (why each exists):
- a page younger than ``index_ttl`` is served from cache (yank status and PEP 792
  status change upstream, so pages cannot be cached forever: PEP 592);
- an older page, or one a client asked to revalidate (``Cache-Control: no-cache`` or
  ``max-age=0``), is revalidated upstream with ``If-None-Match``/``If-Modified-Since``
  when upstream gave validators, else refetched and compared by content digest;
- when upstream fails, what is cached up to ``max_stale`` old is served and marked
  stale, a remembered "not found" included (so the router keeps its decision of which
  upstream owns a project while an earlier one is unreachable);
- an upstream 404 is remembered for ``negative_ttl``.
Concurrent requests for the same project share one upstream fetch. File links that
leave the upstream's origins (``file_hosts``) are dropped when a page is parsed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import cast

from pipgate.config import Config
from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.fleet.pages import SharedPages
from pipgate.limits import Limited, PageFetchLimiter
from pipgate.metrics import Metrics
from pipgate.pages.cache import PageCache
from pipgate.pages.project_list import UpstreamList
from pipgate.pages.source import FileOffer, PageView, ProjectList
from pipgate.redact import redact_url
from pipgate.simple.model import ProjectPage
from pipgate.simple.parse import PageParseError, parse_project_html, parse_project_json
from pipgate.store.catalog import Catalog, PageRecord
from pipgate.upstream.client import PageFetch, UpstreamClient
from pipgate.upstream.origins import keep_allowed_files

log = logging.getLogger("pipgate.pages")


class UpstreamPages:
    """The :class:`~pipgate.pages.source.PageSource` of one upstream."""

    def __init__(
        self,
        config: Config,
        client: UpstreamClient,
        catalog: Catalog,
        metrics: Metrics,
        reporter: FailureReporter,
        fetches: PageFetchLimiter | None = None,
        shared: SharedPages | None = None,
    ) -> None:
        self._config = config
        #: The fleet's copy of pages (several replicas), asked before upstream.
        self._shared = shared
        self._fetches = fetches
        self._client = client
        self.name = client.name
        self._catalog = catalog
        self._metrics = metrics
        self._reporter = reporter
        self._inflight: dict[str, asyncio.Task[PageView]] = {}
        self._cache = PageCache(client.name, catalog, client.config.synthesize_upload_time)
        self._list = UpstreamList(
            client,
            catalog,
            reporter,
            config.cache_dir / "lists" / list_dir_name(client.name),
            ttl=config.root_ttl,
            max_stale=config.max_stale,
        )

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        """The page of ``name`` in this upstream (a view without page if it has none)."""
        record: PageRecord | object | None = _UNREAD
        if not revalidate:
            record = await self._cache.record(name)
            if isinstance(record, PageRecord) and record.age() < self._ttl(record):
                view = await self._cache.view(name, record, "hit")
                if view is not None:
                    return view
        return await self._shared_refresh(name, record)

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        """This upstream's project list."""
        return await self._list.get(revalidate=revalidate)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        """The offered file with this URL key and filename, if the page has it."""
        return (await self.project(name)).offer(key, filename)

    async def close(self) -> None:
        await self._list.close()

    def _ttl(self, record: PageRecord) -> float:
        return self._config.index_ttl if record.status == 200 else self._config.negative_ttl

    # --- refresh -------------------------------------------------------------------------

    async def _shared_refresh(self, name: str, known: PageRecord | object | None) -> PageView:
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.create_task(self._refresh(name, known), name=f"page:{self.name}:{name}")
            self._inflight[name] = task
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        # shield: one client going away must not cancel the fetch others wait for.
        return await asyncio.shield(task)

    async def _refresh(self, name: str, known: PageRecord | object | None) -> PageView:
        # The record read a moment ago (a cold page costs one catalog read, not two).
        record = (
            await self._catalog.get_page(self.name, name)
            if known is _UNREAD
            else cast(PageRecord | None, known)
        )
        if self._shared is not None and known is not _UNREAD:
            view = await self._from_fleet(name, record)
            if view is not None:
                return view
        cached_200 = record is not None and record.status == 200
        if self._fetches is not None:
            try:
                self._fetches.admit(name)
            except Limited:
                # Over the page-fetch budget: what is cached beats a refusal.
                if record is not None and record.age() <= self._config.max_stale:
                    view = await self._cache.view(name, record, "stale")
                    if view is not None:
                        return view
                raise
        try:
            fetched = await self._client.fetch_page(
                self._client.project_url(name),
                etag=record.etag if cached_200 and record else None,
                last_modified=record.last_modified if cached_200 and record else None,
            )
            return await self._store(name, record, fetched)
        except UpstreamError as exc:
            self._reporter.report(
                exc, upstream=self.name, proxy=self._client.proxy_label(), project=name
            )
            if record is not None and record.age() <= self._config.max_stale:
                view = await self._cache.view(name, record, "stale")
                if view is not None:
                    return view
            raise

    async def _from_fleet(self, name: str, record: PageRecord | None) -> PageView | None:
        """Another replica's fresh copy of the page, when it is newer than this one's."""
        assert self._shared is not None
        shared = await self._shared.get(self.name, name)
        if shared is None:
            return None
        theirs, model = shared
        if theirs.age() >= self._ttl(theirs):
            return None
        if record is not None and theirs.fetched_at <= record.fetched_at:
            return None
        await self._catalog.put_page(self.name, name, theirs, model)
        self._cache.remember_record(name, theirs)
        return await self._cache.view(name, theirs, "hit")

    async def _share(self, name: str, record: PageRecord, model: bytes | None) -> None:
        if self._shared is not None:
            await self._shared.put(self.name, name, record, model)

    async def _store(self, name: str, old: PageRecord | None, fetched: PageFetch) -> PageView:
        now = time.time()
        if fetched.status == 404:
            record = PageRecord(status=404, fetched_at=now)
            await self._catalog.put_page(self.name, name, record, None)
            self._cache.remember_record(name, record)
            await self._share(name, record, None)
            return PageView(page=None, digest="", result="miss", age=0.0)
        if fetched.status == 304 and old is not None and old.status == 200:
            record = PageRecord(
                status=200,
                fetched_at=now,
                digest=old.digest,
                etag=fetched.etag or old.etag,
                last_modified=fetched.last_modified or old.last_modified,
                project_status=old.project_status,
            )
            await self._catalog.put_page(self.name, name, record, None)
            self._cache.remember_record(name, record)
            view = await self._cache.view(name, record, "revalidated")
            if view is not None:
                if self._shared is not None:
                    await self._share(name, record, await self._catalog.get_model(self.name, name))
                return view
            # The model vanished from the catalog: fetch unconditionally.
            fetched = await self._client.fetch_page(self._client.project_url(name))
        if fetched.status != 200:
            raise UpstreamError(Reason.BAD_PAGE, f"unexpected status {fetched.status}")
        page, record, unchanged, model, seen = await asyncio.to_thread(
            self._parse_and_store, fetched, name, old, now
        )
        self._cache.remember_record(name, record)
        await self._share(name, record, model)
        memo = await self._cache.remember(record.digest, page, seen)
        return memo.view("revalidated" if unchanged else "miss", 0.0)

    def _parse_and_store(
        self, fetched: PageFetch, name: str, old: PageRecord | None, now: float
    ) -> tuple[ProjectPage, PageRecord, bool, bytes, dict[str, float]]:
        """Parse, then record the page and its files' first-seen times in the catalog:
        one worker-thread hop for all (a cold page's own cost is mostly such hops)."""
        page = self._parse(fetched, name)
        model = page.to_json()
        digest = hashlib.sha256(model).hexdigest()
        record = PageRecord(
            status=200,
            fetched_at=now,
            digest=digest,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            project_status=page.status,
        )
        unchanged = old is not None and old.status == 200 and old.digest == digest
        self._catalog.put_page_now(self.name, name, record, None if unchanged else model)
        return page, record, unchanged, model, self._cache.record_first_seen(page)

    def _parse(self, fetched: PageFetch, name: str) -> ProjectPage:
        """Parse by Content-Type (sniffing when it is missing); drop unusable links."""
        dropped: dict[str, int] = {}

        def skipped(cause: str) -> None:
            dropped[cause] = dropped.get(cause, 0) + 1

        media = fetched.content_type.split(";", 1)[0].strip().lower()
        is_json = media.endswith("+json") or media == "application/json"
        if not media:
            is_json = fetched.body.lstrip()[:1] == b"{"
        try:
            if is_json:
                page = parse_project_json(fetched.body, fetched.url, name, on_skip=skipped)
            else:
                page = parse_project_html(fetched.body, fetched.url, name, on_skip=skipped)
        except PageParseError as exc:
            raise UpstreamError(
                Reason.BAD_PAGE, f"unreadable page from {redact_url(fetched.url)}: {exc}"
            ) from exc
        page, foreign = keep_allowed_files(page, self._client.origins)
        if foreign:
            dropped["origin"] = foreign
        for cause, count in dropped.items():
            self._metrics.links_dropped.labels(upstream=self.name, cause=cause).inc(count)
        if dropped:
            hint = (
                f" (file links must stay on its origins: "
                f"{', '.join(self._client.config.file_origins)})"
                if foreign
                else ""
            )
            log.warning(
                "dropped %s links of %s from %s%s",
                ", ".join(f"{n} {c}" for c, n in sorted(dropped.items())),
                name,
                self.name,
                hint,
            )
        return page


#: ``project()`` did not read the record (a forced revalidation): ``_refresh`` reads it.
_UNREAD = object()


def list_dir_name(name: str) -> str:
    """A directory name for an upstream name (``:`` kept out of paths)."""
    return name.replace("%", "%25").replace(":", "%3A")
