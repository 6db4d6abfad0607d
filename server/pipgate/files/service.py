"""Distribution files and PEP 658 metadata: from the verified cache or from upstream.

Every request first asks the page pipeline whether the project's page offers the file
(:meth:`~pipgate.pages.source.PageSource.find_file`): whatever a stage hides (a policy
rule, a quarantine, a link to a foreign host) is hidden from file URLs too,
whatever project the URL names, and the offer says which upstream the file comes from.
A cached blob is then served without asking upstream (files are immutable); a miss
starts (or joins) one shared :class:`~pipgate.store.downloads.Download` whose bytes
reach the client while they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.files.metadata import METADATA_SUFFIX, DerivedMetadata, metadata_key
from pipgate.files.small import SMALL_BODY, CorruptBody, SmallBodies, read_verified
from pipgate.fleet.fleet import Fleet
from pipgate.limits import DownloadSlots
from pipgate.links import file_key
from pipgate.metrics import Metrics
from pipgate.pages.source import FileOffer, NotOffered, PageSource
from pipgate.simple.model import DistFile
from pipgate.store.blobs import VERIFIABLE, BlobStore, Committed, IntegrityError, is_sha256
from pipgate.store.catalog import BlobRecord, Catalog
from pipgate.store.downloads import (
    Body,
    Download,
    DownloadManager,
    OnFailure,
    PassThrough,
    Readable,
)
from pipgate.store.evict import Evictor
from pipgate.store.integrity import remove_corrupt
from pipgate.store.locks import DownloadLock
from pipgate.upstream.client import MAX_METADATA_BYTES
from pipgate.upstream.registry import Upstreams

log = logging.getLogger("pipgate.files")

#: Seconds between two recorded accesses of one file by one worker.
TOUCH_INTERVAL = 60.0
#: How long a file that failed verification is refused before it is tried again (a
#: client retrying at once would only fetch the same bad bytes).
BAD_FILE_SECONDS = 60.0
#: How long a cache hit is remembered in memory before it is looked up again.
HIT_MEMO_SECONDS = 5.0
#: Oldest entries of the per-file memos looked at for expiry on each insert.
SWEEP = 8
HIT_MEMO_ENTRIES = 10_000


class FileNotFound(NotOffered):
    """No such file: not offered, or no metadata for it."""


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
    #: ``hit`` (in the cache before this request), ``miss`` or ``bypass`` (passed through).
    result: str = "hit"
    #: Whether Range requests can be answered (not for pass-through streams).
    ranges: bool = True
    #: The upstream the file comes (or came) from.
    upstream: str | None = None

    @property
    def cached(self) -> bool:
        return self.result == "hit"


class FileService:
    """Resolves ``files/<project>/<key>/<filename>`` URLs to bytes."""

    def __init__(
        self,
        pages: PageSource,
        upstreams: Upstreams,
        catalog: Catalog,
        blobs: BlobStore,
        downloads: DownloadManager,
        metrics: Metrics,
        evictor: Evictor,
        reporter: FailureReporter,
        derived: DerivedMetadata,
        slots: DownloadSlots,
        *,
        max_file_size: int = 0,
        fleet: Fleet | None = None,
    ) -> None:
        self._pages = pages
        self._fleet = fleet or Fleet(blobs=blobs, metrics=metrics)
        self._slots = slots
        self._max_file_size = max_file_size
        self._upstreams = upstreams
        self._catalog = catalog
        self._blobs = blobs
        self._downloads = downloads
        self._metrics = metrics
        self._evictor = evictor
        self._reporter = reporter
        self._derived = derived
        #: Metadata extractions running after a wheel was committed.
        self._deriving: set[asyncio.Task[str | None]] = set()
        self._metadata_inflight: dict[str, asyncio.Task[Served]] = {}
        #: sha256 -> when this worker last recorded an access (writes are throttled).
        self._touched: dict[str, float] = {}
        #: file key -> when its download last failed verification (this worker).
        self._bad: dict[str, float] = {}
        #: (key, filename) -> recent cache hit and when it was looked up.
        self._hits: dict[tuple[str, str], tuple[Served, float]] = {}
        self._small = SmallBodies()
        #: Keys of files whose metadata this worker stored (no extraction from them);
        #: forgotten all at once when full (forgetting costs one extraction).
        self._stored_metadata: set[str] = set()

    async def _offer(self, project: str, key: str, filename: str) -> FileOffer:
        offer = await self._pages.find_file(project, key, filename)
        if offer is None:
            raise FileNotFound(f"{filename} is not a file that project {project} offers")
        return offer

    async def open(self, project: str, key: str, filename: str) -> Served:
        """The file to send. Raises :class:`FileNotFound` or :class:`UpstreamError`."""
        offer = await self._offer(project, key, filename)
        cached = self._recent_hit(key, filename)
        if cached is None:
            # One worker-thread hop for everything a cache hit needs.
            cached = await asyncio.to_thread(self._cached, offer, key)
            if cached is not None:
                self._remember_hit(key, cached)
        if cached is not None:
            self._metrics.cache("file", "hit")
            await self._touch(cached.sha256, cached.size)
            return cached

        dist = offer.dist
        client = self._upstreams[offer.upstream]
        self._refuse_if_bad(key, filename, client.name)
        self._refuse_if_too_large(offer)
        expected = _verifiable(dist)
        if self._downloads.degraded and self._downloads.active(key) is None:
            return self._pass_through(offer)
        self._metrics.cache("file", "miss")

        loop = asyncio.get_running_loop()
        recorder = self._recorder(project, filename, key)

        def record(committed: Committed) -> None:  # in the download's commit hop
            loop.call_soon_threadsafe(self._evictor.committed, recorder(committed))

        async def on_commit(committed: Committed) -> None:
            self._just_stored(committed)
            self._derive_later(offer, key)
            await self._fleet.committed(key, committed)

        download = self._downloads.active(key)
        if download is None:
            # A new upstream download needs a slot (joining a running one does not).
            slot = await self._slots.acquire()

            async def on_end() -> None:
                await self._slots.release(slot)
                await self._fleet.ended(key)

            download, started = self._downloads.get_or_start(
                key,
                self._fleet.fetch(
                    key, dist.sha256, lambda start: client.open_file(dist.url, start)
                ),
                expected,
                dist.size,
                on_commit,
                self._failed(offer, filename),
                label=f"{project}/{filename}",
                on_end=on_end,
                record=record,
                keep_up_to=SMALL_BODY,
            )
            if started:
                log.info("download %s/%s from %s", project, filename, client.name)
            else:  # another request started it while this one queued
                await self._slots.release(slot)
        try:
            await download.wait_started()
        except UpstreamError as exc:
            if exc.reason is Reason.DISK_FULL:
                return self._pass_through(offer)
            raise
        return Served(
            filename=filename,
            sha256=dist.sha256,
            size=download.size,
            stream=download,
            result="miss",
            upstream=offer.upstream,
        )

    async def for_peer(self, key: str) -> Served | None:
        """What another replica streaming ``key`` from this one gets: the committed
        blob, or this host's download in progress; ``None`` otherwise (a peer never
        makes this replica fetch: the lease holder does)."""
        sha = await asyncio.to_thread(self._catalog.sha256_for, key)
        size = await asyncio.to_thread(self._blobs.size, sha) if sha else None
        if sha is not None and size is not None:
            return Served(key, sha, size, self._blobs.path(sha))
        download = self._downloads.active(key)
        if download is None:
            lock = self._blobs.download_lock_path(key)
            if not await asyncio.to_thread(DownloadLock.is_held, lock):
                return None
            # Another worker of this host downloads it: follow it through the disk.
            download, _ = self._downloads.get_or_start(
                key, _not_here, {}, None, _nothing, _ignore, label=f"peer/{key}"
            )
        await download.wait_started()
        return Served(key, None, download.size, stream=download, result="miss")

    def _derive_later(self, offer: FileOffer, key: str) -> None:
        """Extract a committed wheel's metadata in the background (not on the path of
        the download's last byte)."""
        if not offer.dist.filename.endswith(".whl") or key in self._stored_metadata:
            return  # (clients ask for the metadata first: it is usually stored already)
        task = asyncio.create_task(
            asyncio.to_thread(self._derived.derive, offer.project, offer.dist, key)
        )
        self._deriving.add(task)
        task.add_done_callback(self._deriving.discard)

    async def idle(self) -> None:
        """Wait for the background metadata extractions started so far."""
        if self._deriving:
            await asyncio.gather(*self._deriving, return_exceptions=True)

    async def close(self) -> None:
        """Wait for background work (shutdown)."""
        await self.idle()

    def _refuse_if_bad(self, key: str, filename: str, upstream: str) -> None:
        failed_at = self._bad.get(key)
        if failed_at is None:
            return
        ago = time.monotonic() - failed_at
        if ago > BAD_FILE_SECONDS:
            del self._bad[key]
            return
        error = UpstreamError(
            Reason.HASH_MISMATCH,
            f"{filename} from {upstream} did not match its published sha256 {ago:.0f} s ago; "
            f"it is tried again in {BAD_FILE_SECONDS - ago:.0f} s",
        )
        error.phrase = (
            f"Service Unavailable: pipgate: {filename} failed verification upstream "
            "(hash_mismatch); try again later"
        )
        raise error

    def _refuse_if_too_large(self, offer: FileOffer) -> None:
        size = offer.dist.size
        if self._max_file_size and size is not None and size > self._max_file_size:
            raise UpstreamError(
                Reason.TOO_LARGE,
                f"{offer.dist.filename} is {size} bytes, over limits.max_file_size "
                f"({self._max_file_size} bytes)",
            )

    def _failed(self, offer: FileOffer, file: str) -> OnFailure:
        """Where a failed fetch of ``offer`` is reported."""
        client = self._upstreams[offer.upstream]
        key = file_key(offer.dist)

        def report(error: UpstreamError) -> None:
            if error.reason is Reason.HASH_MISMATCH and not file.endswith(METADATA_SUFFIX):
                if len(self._bad) > 10_000:
                    self._bad.clear()
                self._bad[key] = time.monotonic()
            self._reporter.report(
                error,
                upstream=client.name,
                proxy=client.proxy_label(),
                project=offer.project,
                file=file,
            )

        return report

    def _pass_through(self, offer: FileOffer) -> Served:
        """The cache cannot store files now: stream through, verified, not cached."""
        dist = offer.dist
        client = self._upstreams[offer.upstream]
        self._metrics.cache("file", "bypass")
        log.warning("pass-through (cache unavailable) for %s/%s", offer.project, dist.filename)
        stream = PassThrough(
            fetch=lambda: client.open_file(dist.url),
            expected=_verifiable(dist),
            size=dist.size,
            on_failure=self._failed(offer, dist.filename),
            slot=self._slots.slot,
        )
        return Served(
            filename=dist.filename,
            sha256=dist.sha256,
            size=dist.size,
            stream=stream,
            result="bypass",
            ranges=False,
            upstream=offer.upstream,
        )

    async def metadata(self, project: str, key: str, filename: str) -> Served:
        """The PEP 658 metadata file of distribution ``filename``."""
        offer = await self._offer(project, key, filename)
        if not offer.dist.has_metadata:
            raise FileNotFound(f"no metadata for {filename}")
        meta_key = metadata_key(key)
        name = filename + METADATA_SUFFIX
        recent = self._recent_hit(meta_key, name)
        if recent is not None:
            self._metrics.cache("metadata", "hit")
            return recent
        # Stored already, or in a cached wheel (its own METADATA: no upstream request).
        sha, size = await asyncio.to_thread(self._stored_metadata_blob, offer, key)
        if sha is not None and size is not None:
            self._metrics.cache("metadata", "hit")
            served = Served(name, sha, size, self._blobs.path(sha), upstream=offer.upstream)
            self._remember_hit(meta_key, served)
            return served
        task = self._metadata_inflight.get(meta_key)
        if task is None:
            task = asyncio.create_task(self._fetch_metadata(offer, key))
            self._metadata_inflight[meta_key] = task
            task.add_done_callback(lambda _t: self._metadata_inflight.pop(meta_key, None))
        return await asyncio.shield(task)

    async def _fetch_metadata(self, offer: FileOffer, key: str) -> Served:
        dist = offer.dist
        name = dist.filename + METADATA_SUFFIX
        client = self._upstreams[offer.upstream]
        report = self._failed(offer, name)
        self._metrics.cache("metadata", "miss")
        body = await self._fleet.read_small(dist.metadata_sha256, MAX_METADATA_BYTES)
        fetched = body is None
        try:
            if body is None:
                body = await client.fetch_small(dist.url + METADATA_SUFFIX)
        except UpstreamError as exc:
            report(exc)
            raise
        if body is None:
            raise FileNotFound(f"upstream has no metadata for {dist.filename}")
        expected = {"sha256": dist.metadata_sha256} if dist.metadata_sha256 else {}
        record = self._recorder(offer.project, name, metadata_key(key))

        def store() -> tuple[Committed, tuple[int, int]]:
            committed = self._blobs.put_bytes(body, expected)
            return committed, record(committed)

        try:
            # Stored, recorded and aliased in one worker-thread hop.
            committed, totals = await asyncio.to_thread(store)
        except IntegrityError as exc:
            error = UpstreamError(Reason(exc.kind), f"metadata of {dist.filename}: {exc}")
            report(error)
            raise error from exc
        self._evictor.committed(totals)
        # Verified bytes in hand: the answer (and the next ones) need no read from disk.
        self._small.put(committed.sha256, body)
        if len(self._stored_metadata) >= HIT_MEMO_ENTRIES:
            self._stored_metadata.clear()
        self._stored_metadata.add(key)
        if fetched:
            self._fleet.publish_small(committed)
        return Served(
            name,
            committed.sha256,
            committed.size,
            committed.path,
            result="miss",
            upstream=offer.upstream,
        )

    def _stored_metadata_blob(self, offer: FileOffer, key: str) -> tuple[str | None, int | None]:
        """The metadata blob of ``offer`` (stored, or derived now from its cached wheel)
        and its size: one blocking look-up."""
        sha = self._derived.find(offer.project, offer.dist, key)
        return sha, None if sha is None else self._blobs.size(sha)

    async def small_body(self, served: Served) -> bytes | None:
        """The whole verified body of a small cached blob, from memory after the first
        read, or of a small download once it verified; ``None`` when it is sent from
        disk instead (large, not a blob, or another worker's download).

        Raises ``FileNotFoundError`` when the blob is gone, or was corrupt on disk (it is
        then removed, so the next look-up fetches it again).
        """
        if isinstance(served.stream, Download):
            # A small file arriving now: its readers get it whole once it verified.
            data = await served.stream.kept_body()
            committed = served.stream.committed
            if data is not None and committed is not None:
                self._small.put(committed.sha256, data)
            return data
        sha, path, size = served.sha256, served.path, served.size
        if path is None or sha is None or size is None or size > SMALL_BODY:
            return None
        data = self._small.get(sha)
        if data is not None:
            return data
        if not is_sha256(sha):
            return None
        try:
            data = await asyncio.to_thread(read_verified, path, sha, self._blobs.use_lock_path(sha))
        except CorruptBody as exc:
            log.error("cached %s is corrupt, removed to be fetched again: %s", served.filename, exc)
            self._metrics.integrity_checks.labels(result="corrupt").inc()
            await asyncio.to_thread(self._remove_corrupt, sha, exc.identity)
            raise FileNotFoundError(str(exc)) from exc
        self._small.put(sha, data)
        return data

    def _remove_corrupt(self, sha256: str, identity: tuple[int, int]) -> None:
        remove_corrupt(
            self._blobs, self._catalog, sha256, identity, self._catalog.blob_record(sha256)
        )

    def forget(self, key: str, filename: str) -> None:
        """Drop a memoised hit whose blob turned out to be gone (evicted elsewhere);
        ``filename`` as in the URL (a ``.metadata`` name for a metadata file)."""
        if filename.endswith(METADATA_SUFFIX):
            key = metadata_key(key)
        self._hits.pop((key, filename), None)

    def _recent_hit(self, key: str, filename: str) -> Served | None:
        """A hit found within the last few seconds (its blob is immutable while it
        exists; a vanished blob shows as ``FileNotFoundError`` on open, and the
        caller then calls :meth:`forget`)."""
        entry = self._hits.get((key, filename))
        if entry is None:
            return None
        served, found_at = entry
        if time.monotonic() - found_at > HIT_MEMO_SECONDS:
            del self._hits[(key, filename)]
            return None
        return served

    def _remember_hit(self, key: str, served: Served) -> None:
        now = time.monotonic()
        # Hits live seconds: the oldest expired ones go (files asked for once would
        # otherwise stay until the bound, a few MiB per worker).
        for old in list(itertools.islice(self._hits, SWEEP)):
            if now - self._hits[old][1] <= HIT_MEMO_SECONDS:
                break
            del self._hits[old]
        if len(self._hits) >= HIT_MEMO_ENTRIES:
            self._hits.clear()
        self._hits.pop((key, served.filename), None)  # to the end: oldest stay first
        self._hits[(key, served.filename)] = (served, now)

    def _just_stored(self, committed: Committed) -> None:
        """A blob committed and recorded a moment ago has its access time (the record
        set it): the installs that follow at once write none."""
        self._touched.pop(committed.sha256, None)
        self._touched[committed.sha256] = time.time()

    def _cached(self, offer: FileOffer, key: str) -> Served | None:
        """The cached blob of an offered file, if any (blocking).

        A blob on disk that the catalog does not know under this name (a crash between
        commit and record, or another file with the same content) is recorded now.
        """
        dist = offer.dist
        sha = dist.sha256 if dist.sha256 and is_sha256(dist.sha256) else None
        if sha is None:
            sha = self._catalog.sha256_for(key)
        if sha is None:
            return None
        size = self._blobs.size(sha)
        if size is None:
            return None
        record = self._catalog.blob_record(sha)
        if record is None or not record.filename:
            named = BlobRecord(
                project=offer.project,
                filename=dist.filename,
                size=size,
                verified=record.verified if record is not None else True,
                stored_at=record.stored_at if record is not None else time.time(),
            )
            if record is None:
                self._catalog.record_blob_now(sha, named)  # counts it in the totals
            else:
                self._catalog.put_blob_record(sha, named)
        return Served(
            filename=dist.filename,
            sha256=sha,
            size=size,
            path=self._blobs.path(sha),
            upstream=offer.upstream,
        )

    def _recorder(
        self, project: str, filename: str, key: str
    ) -> Callable[[Committed], tuple[int, int]]:
        """What records a committed blob under ``key`` in the catalog: its record, its
        size in the totals and its alias, returning the new totals (blocking: one
        worker-thread hop for all, the eviction check included)."""

        def record(c: Committed) -> tuple[int, int]:
            self._catalog.record_blob_now(
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
                self._catalog.put_alias_now(key, c.sha256)
            return self._catalog.totals_now()

        return record

    async def _touch(self, sha256: str | None, size: int | None = None) -> None:
        """Record an access for LRU eviction, at most once a minute per file and worker."""
        if sha256 is None:
            return
        now = time.time()
        if now - self._touched.get(sha256, 0.0) < TOUCH_INTERVAL:
            return
        # Only touches within the interval matter: the oldest expired ones go.
        for old in list(itertools.islice(self._touched, SWEEP)):
            if now - self._touched[old] < TOUCH_INTERVAL:
                break
            del self._touched[old]
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched.pop(sha256, None)  # to the end: oldest stay first
        self._touched[sha256] = now
        await self._catalog.touch(sha256, now)
        if size is not None:
            await self._fleet.touch(sha256, size, now)


@contextlib.asynccontextmanager
async def _not_here() -> AsyncIterator[Body]:
    """The fetch of a download joined for a peer: it never goes upstream."""
    raise UpstreamError(Reason.OTHER, "no download of this file on this replica")
    yield  # pragma: no cover


async def _nothing(_committed: Committed) -> None:
    return None


def _ignore(_error: UpstreamError) -> None:
    return None


def _verifiable(dist: DistFile) -> dict[str, str]:
    """The published hashes pipgate can check (hashlib algorithms pip also accepts)."""
    return {k.lower(): v for k, v in dist.hashes.items() if k.lower() in VERIFIABLE}
