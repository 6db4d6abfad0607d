"""Distribution files and PEP 658 metadata: from the verified cache or from upstream.

A cached blob is served without asking upstream (files are immutable); a miss starts
(or joins) one shared :class:`~pipgate.store.downloads.Download` whose bytes reach the
client while they arrive. The project page is consulted only on a miss, to learn the
upstream URL and the published hashes, and for PEP 792 quarantine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pipgate.errors import Reason, UpstreamError
from pipgate.index_service import IndexService
from pipgate.metrics import Metrics
from pipgate.simple.model import DistFile
from pipgate.store.blobs import VERIFIABLE, BlobStore, Committed, IntegrityError, is_sha256
from pipgate.store.downloads import DownloadManager, Readable
from pipgate.store.evict import Evictor
from pipgate.store.index import BlobRecord, Index
from pipgate.upstream.client import UpstreamClient

log = logging.getLogger("pipgate.files")

METADATA_SUFFIX = ".metadata"
#: Seconds between two recorded accesses of one file by one worker.
TOUCH_INTERVAL = 60.0
#: How long a cache hit is remembered in memory before it is looked up again.
HIT_MEMO_SECONDS = 5.0
HIT_MEMO_ENTRIES = 10_000


class FileNotFound(Exception):
    """No such file (unknown, not offered, or the project is quarantined)."""


@dataclass(frozen=True)
class Served:
    """What the web layer sends: a committed blob, or bytes still arriving."""

    filename: str
    #: sha256 when known before the body is sent (for the ETag).
    sha256: str | None
    size: int | None
    path: Path | None = None
    #: A download in progress (shared) or a pass-through stream (this client only).
    stream: Readable | None = None
    #: Whether the bytes were already in the cache before this request.
    cached: bool = True
    #: Whether Range requests can be answered (not for pass-through streams).
    ranges: bool = True


class FileService:
    """Resolves ``files/<project>/<key>/<filename>`` URLs to bytes."""

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        downloads: DownloadManager,
        pages: IndexService,
        client: UpstreamClient,
        metrics: Metrics,
        evictor: Evictor,
    ) -> None:
        self._index = index
        self._blobs = blobs
        self._downloads = downloads
        self._pages = pages
        self._client = client
        self._metrics = metrics
        self._evictor = evictor
        self._metadata_inflight: dict[str, asyncio.Task[Served]] = {}
        #: sha256 -> when this worker last recorded an access (writes are throttled).
        self._touched: dict[str, float] = {}
        #: (key, filename) -> recent cache hit and when it was looked up.
        self._hits: dict[tuple[str, str], tuple[Served, float]] = {}

    async def open(self, project: str, key: str, filename: str) -> Served:
        """The file to send. Raises :class:`FileNotFound` or :class:`UpstreamError`."""
        self._pages.check_policy(project, filename)
        cached = self._recent_hit(project, key, filename)
        if cached is None:
            # One worker-thread hop for everything a cache hit needs.
            cached = await asyncio.to_thread(self._cached, project, key, filename)
            if cached is not None:
                self._remember_hit(project, key, cached)
        if cached is not None:
            self._metrics.cache("file", "hit")
            await self._touch(cached.sha256)
            return cached
        dist = await self._pages.find_file(project, key, filename)
        if dist is None:
            raise FileNotFound(f"{filename} is not a file of project {project}")
        adopted = await self._adopt(project, key, dist)
        if adopted is not None:
            self._metrics.cache("file", "hit")
            return adopted

        expected = _verifiable(dist)
        if self._downloads.degraded and self._downloads.active(key) is None:
            return self._pass_through(project, dist)
        self._metrics.cache("file", "miss")

        async def on_commit(committed: Committed) -> None:
            await self._record(project, filename, key, committed)

        download, started = self._downloads.get_or_start(
            key, dist.url, expected, dist.size, on_commit, project=project, filename=filename
        )
        if started:
            log.info("download %s/%s from %s", project, filename, self._client.name)
        try:
            await download.wait_started()
        except UpstreamError as exc:
            if exc.reason is Reason.DISK_FULL:
                return self._pass_through(project, dist)
            raise
        return Served(
            filename=filename,
            sha256=dist.sha256,
            size=download.size,
            stream=download,
            cached=False,
        )

    def _pass_through(self, project: str, dist: DistFile) -> Served:
        """The cache cannot store files now: stream through, verified, not cached."""
        self._metrics.cache("file", "bypass")
        log.warning("pass-through (cache unavailable) for %s/%s", project, dist.filename)
        return Served(
            filename=dist.filename,
            sha256=dist.sha256,
            size=dist.size,
            stream=self._downloads.pass_through(
                dist.url, _verifiable(dist), dist.size, project=project, filename=dist.filename
            ),
            cached=False,
            ranges=False,
        )

    async def metadata(self, project: str, key: str, filename: str) -> Served:
        """The PEP 658 metadata file of distribution ``filename``."""
        self._pages.check_policy(project, filename + METADATA_SUFFIX)
        await self._check_offered(project)
        meta_key = f"meta:{key}"
        sha = await self._index.get_alias(meta_key)
        if sha is not None:
            size = await asyncio.to_thread(self._blobs.size, sha)
            if size is not None:
                self._metrics.cache("metadata", "hit")
                return Served(filename + METADATA_SUFFIX, sha, size, self._blobs.path(sha))
        task = self._metadata_inflight.get(meta_key)
        if task is None:
            task = asyncio.create_task(self._fetch_metadata(project, key, filename))
            self._metadata_inflight[meta_key] = task
            task.add_done_callback(lambda _t: self._metadata_inflight.pop(meta_key, None))
        return await asyncio.shield(task)

    async def _fetch_metadata(self, project: str, key: str, filename: str) -> Served:
        dist = await self._pages.find_file(project, key, filename)
        if dist is None or not dist.has_metadata:
            raise FileNotFound(f"no metadata for {filename}")
        self._metrics.cache("metadata", "miss")
        try:
            body = await self._client.fetch_small(dist.url + METADATA_SUFFIX)
        except UpstreamError as exc:
            self._client.report_failure(exc, project=project, file=filename + METADATA_SUFFIX)
            raise
        if body is None:
            raise FileNotFound(f"upstream has no metadata for {filename}")
        self._metrics.bytes_fetched.labels(upstream=self._client.name).inc(len(body))
        expected = {"sha256": dist.metadata_sha256} if dist.metadata_sha256 else {}
        try:
            committed = await asyncio.to_thread(self._blobs.put_bytes, body, expected)
        except IntegrityError as exc:
            error = UpstreamError(Reason(exc.kind), f"metadata of {filename}: {exc}")
            self._client.report_failure(error, project=project, file=filename + METADATA_SUFFIX)
            raise error from exc
        await self._record(project, filename + METADATA_SUFFIX, f"meta:{key}", committed)
        return Served(
            filename + METADATA_SUFFIX,
            committed.sha256,
            committed.size,
            committed.path,
            cached=False,
        )

    async def _check_offered(self, project: str) -> None:
        # PEP 792: a quarantined project offers no files, cached ones included.
        record = await self._index.get_page(project)
        if record is not None and record.project_status == "quarantined":
            raise FileNotFound(f"project {project} is quarantined upstream")

    def forget(self, key: str, filename: str) -> None:
        """Drop a memoised hit whose blob turned out to be gone (evicted elsewhere)."""
        self._hits.pop((key, filename), None)

    def _recent_hit(self, project: str, key: str, filename: str) -> Served | None:
        """A hit found within the last few seconds (its blob is immutable while it
        exists; a vanished blob shows as ``FileNotFoundError`` on open, and the
        caller then calls :meth:`forget`)."""
        entry = self._hits.get((key, filename))
        if entry is None:
            return None
        served, found_at = entry
        if time.monotonic() - found_at > HIT_MEMO_SECONDS or self._pages.is_quarantined(project):
            # Re-check now and then: PEP 792 quarantine applies to cached files too.
            del self._hits[(key, filename)]
            return None
        return served

    def _remember_hit(self, project: str, key: str, served: Served) -> None:
        if len(self._hits) >= HIT_MEMO_ENTRIES:
            self._hits.clear()
        self._hits[(key, served.filename)] = (served, time.monotonic())

    def _cached(self, project: str, key: str, filename: str) -> Served | None:
        """The cached blob for this URL, if any (blocking; raises if quarantined)."""
        if self._index.project_status(project) == "quarantined":
            # PEP 792: a quarantined project offers no files, cached ones included.
            raise FileNotFound(f"project {project} is quarantined upstream")
        found = self._index.cached_blob(key)
        if found is None or found[1].filename != filename:
            return None
        sha = found[0]
        size = self._blobs.size(sha)
        if size is None:
            return None
        return Served(filename=filename, sha256=sha, size=size, path=self._blobs.path(sha))

    async def _adopt(self, project: str, key: str, dist: DistFile) -> Served | None:
        """Serve a verified blob that is on disk but not recorded under this name.

        Happens after a crash between commit and record (start-up reconciliation
        adopts such blobs without a name) or when two names share one content.
        """
        sha = dist.sha256
        if not sha or not is_sha256(sha):
            return None
        size = await asyncio.to_thread(self._blobs.size, sha)
        if size is None:
            return None
        committed = Committed(sha256=sha, size=size, path=self._blobs.path(sha), verified=True)
        await self._record(project, dist.filename, key, committed)
        return Served(filename=dist.filename, sha256=sha, size=size, path=committed.path)

    async def _record(self, project: str, filename: str, key: str, c: Committed) -> None:
        await self._index.record_blob(
            c.sha256,
            BlobRecord(
                project=project,
                filename=filename,
                size=c.size,
                verified=c.verified,
                stored_at=time.time(),
            ),
        )
        if key != c.sha256:
            await self._index.put_alias(key, c.sha256)
        self._evictor.request()

    async def _touch(self, sha256: str | None) -> None:
        """Record an access for LRU eviction, at most once a minute per file and worker."""
        if sha256 is None:
            return
        now = time.time()
        if now - self._touched.get(sha256, 0.0) < TOUCH_INTERVAL:
            return
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched[sha256] = now
        await self._index.touch(sha256, now)


def _verifiable(dist: DistFile) -> dict[str, str]:
    """The published hashes pipgate can check (hashlib algorithms pip also accepts)."""
    return {k.lower(): v for k, v in dist.hashes.items() if k.lower() in VERIFIABLE}
