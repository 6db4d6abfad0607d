"""Project pages: fetch from upstream, parse once, cache with a TTL, serve stale on error.

Freshness rules (why each exists):
- a page younger than ``index_ttl`` is served from cache (yank status and PEP 792
  status change upstream, so pages cannot be cached forever: PEP 592);
- an older page, or one a client asked to revalidate (``Cache-Control: no-cache`` or
  ``max-age=0``), is revalidated upstream with ``If-None-Match``/``If-Modified-Since``
  when upstream gave validators, else refetched and compared by content digest;
- when upstream fails, a cached page up to ``max_stale`` old is served and marked stale;
- an upstream 404 is remembered for ``negative_ttl``.
Concurrent requests for the same project share one upstream fetch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from pipgate.config import Config
from pipgate.errors import Reason, UpstreamError
from pipgate.links import file_key
from pipgate.metrics import Metrics
from pipgate.policy import Policy
from pipgate.redact import redact_url
from pipgate.simple.model import DistFile, ProjectPage
from pipgate.simple.parse import PageParseError, parse_project_html, parse_project_json
from pipgate.store.index import Index, PageRecord
from pipgate.upstream.client import PageFetch, UpstreamClient

log = logging.getLogger("pipgate.index")

#: Parsed pages kept in memory, by content digest (big projects parse in ~50 ms).
MODEL_CACHE_SIZE = 256


@dataclass(frozen=True)
class PageView:
    """A project page as pipgate will serve it."""

    #: ``None`` when the project does not exist upstream.
    page: ProjectPage | None
    digest: str
    #: ``hit``, ``miss``, ``revalidated`` or ``stale`` (the cache metric's result).
    result: str
    #: Seconds since upstream last confirmed the content.
    age: float

    @property
    def stale(self) -> bool:
        return self.result == "stale"


class IndexService:
    """Serves parsed project pages from cache or upstream."""

    def __init__(
        self, config: Config, index: Index, client: UpstreamClient, metrics: Metrics
    ) -> None:
        self._config = config
        self._policy = Policy(config.deny)
        self._index = index
        self._client = client
        self._metrics = metrics
        self._inflight: dict[str, asyncio.Task[PageView]] = {}
        self._models: OrderedDict[str, ProjectPage] = OrderedDict()
        #: Projects this worker last saw quarantined (PEP 792), for the file hot path.
        self._quarantined: set[str] = set()

    def is_quarantined(self, name: str) -> bool:
        """Whether this worker's latest copy of the page says quarantined."""
        return name in self._quarantined

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        """The page of normalised project ``name``.

        Raises :class:`UpstreamError` when upstream fails and nothing usable is cached,
        or when the project is denied by policy.
        """
        self.check_policy(name)
        record = await self._index.get_page(name)
        if record is not None and not revalidate and record.age() < self._ttl(record):
            view = await self._view(name, record, "hit")
            if view is not None:
                self._metrics.cache("index", "hit")
                return view
        view = await self._shared_refresh(name)
        self._metrics.cache("index", view.result)
        return view

    def check_policy(self, name: str, file: str | None = None) -> None:
        """Refuse (and report) a project the policy denies."""
        try:
            self._policy.check(name)
        except UpstreamError as exc:
            self._client.report_failure(exc, project=name, file=file)
            raise

    async def find_file(self, name: str, key: str, filename: str) -> DistFile | None:
        """The offered file of ``name`` whose URL key and filename match, if any."""
        view = await self.project(name)
        if view.page is None:
            return None
        for dist in view.page.offered_files():
            if dist.filename == filename and file_key(dist) == key:
                return dist
        return None

    def _ttl(self, record: PageRecord) -> float:
        return self._config.index_ttl if record.status == 200 else self._config.negative_ttl

    async def _shared_refresh(self, name: str) -> PageView:
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.create_task(self._refresh(name), name=f"page:{name}")
            self._inflight[name] = task
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        # shield: one client going away must not cancel the fetch others wait for.
        return await asyncio.shield(task)

    async def _refresh(self, name: str) -> PageView:
        record = await self._index.get_page(name)
        url = self._client.project_url(name)
        cached_200 = record is not None and record.status == 200
        try:
            fetched = await self._client.fetch_page(
                url,
                etag=record.etag if cached_200 and record else None,
                last_modified=record.last_modified if cached_200 and record else None,
            )
            return await self._store(name, record, fetched)
        except UpstreamError as exc:
            self._client.report_failure(exc, project=name)
            if record is not None and record.age() <= self._config.max_stale:
                view = await self._view(name, record, "stale")
                if view is not None:
                    return view
            raise

    async def _store(self, name: str, old: PageRecord | None, fetched: PageFetch) -> PageView:
        now = time.time()
        if fetched.status == 404:
            record = PageRecord(status=404, fetched_at=now)
            await self._index.put_page(name, record, None)
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
            await self._index.put_page(name, record, None)
            view = await self._view(name, record, "revalidated")
            if view is not None:
                return view
            # The model vanished from the index: fetch unconditionally.
            fetched = await self._client.fetch_page(self._client.project_url(name))
        if fetched.status != 200:
            raise UpstreamError(Reason.BAD_PAGE, f"unexpected status {fetched.status}")
        page = await asyncio.to_thread(_parse, fetched, name)
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
        if page.quarantined:
            self._quarantined.add(name)
        else:
            self._quarantined.discard(name)
        unchanged = old is not None and old.status == 200 and old.digest == digest
        await self._index.put_page(name, record, None if unchanged else model)
        self._remember(digest, page)
        return PageView(
            page=page, digest=digest, result="revalidated" if unchanged else "miss", age=0.0
        )

    async def _view(self, name: str, record: PageRecord, result: str) -> PageView | None:
        if record.status != 200:
            return PageView(page=None, digest="", result=result, age=record.age())
        page = self._models.get(record.digest)
        if page is None:
            model = await self._index.get_model(name)
            if model is None or hashlib.sha256(model).hexdigest() != record.digest:
                return None
            page = await asyncio.to_thread(ProjectPage.from_json, model)
            self._remember(record.digest, page)
        else:
            self._models.move_to_end(record.digest)
        return PageView(page=page, digest=record.digest, result=result, age=record.age())

    def _remember(self, digest: str, page: ProjectPage) -> None:
        self._models[digest] = page
        self._models.move_to_end(digest)
        while len(self._models) > MODEL_CACHE_SIZE:
            self._models.popitem(last=False)


def _parse(fetched: PageFetch, name: str) -> ProjectPage:
    """Parse an upstream page by its Content-Type (sniffing when it is missing)."""
    media = fetched.content_type.split(";", 1)[0].strip().lower()
    is_json = media.endswith("+json") or media == "application/json"
    if not media:
        is_json = fetched.body.lstrip()[:1] == b"{"
    try:
        if is_json:
            return parse_project_json(fetched.body, fetched.url, name)
        return parse_project_html(fetched.body, fetched.url, name)
    except PageParseError as exc:
        raise UpstreamError(
            Reason.BAD_PAGE, f"unreadable page from {redact_url(fetched.url)}: {exc}"
        ) from exc
