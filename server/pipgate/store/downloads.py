"""In-flight downloads shared by every reader, in this process and in other workers.

For each file key, exactly one process on the cache directory downloads (it holds the
key's :class:`~pipgate.store.locks.DownloadLock`) into ``tmp/<key>.part`` while hashing
it. Within a process, all requests for the key share one :class:`Download`; in other
processes the :class:`Download` *follows* the owner's temp file and published state.
Readers read what is already on disk, then wait for more, so every client receives
bytes while the file is still arriving.

The verification rule holds for every reader: the file's last byte is held back until
the owner has verified and committed the blob, and a reader whose owner failed (or
whose owner changed, so earlier bytes may differ) is aborted.

When the cache cannot take the file (disk full, read-only), :class:`PassThrough`
streams it straight from upstream to one client, verified the same way, not cached.

The store knows nothing of HTTP: bytes come from a :data:`Fetch`, an async context
manager giving a :class:`Body` (the upstream layer's resuming file stream), and
failures go to the ``on_failure`` callback the caller injects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pipgate.errors import Reason, UpstreamError, classify
from pipgate.metrics import Metrics
from pipgate.store.blobs import (
    VERIFIABLE,
    BlobStore,
    BlobWriter,
    Committed,
    IntegrityError,
    check_bytes,
    sync_directory,
)
from pipgate.store.locks import DownloadLock

log = logging.getLogger("pipgate.downloads")

CHUNK = 256 * 1024
#: How often a follower in another process looks at the owner's progress.
FOLLOW_POLL = 0.02
#: A follower waits this long for the owner to publish its state before giving up.
FOLLOW_START_TIMEOUT = 60.0
#: After a disk-full or unwritable-cache error, new downloads pass through this long.
DEGRADED_SECONDS = 60.0
#: Free space kept beyond a file's size (and the rest of the downloads in flight).
FREE_SPACE_RESERVE = 64 << 20
#: A download nobody reads (here or in another worker) stops after this long: a client
#: that gave up costs the upstream no more than this, one that retries at once rejoins.
ABANDON_GRACE = 30.0
#: How often a follower in another worker says it still reads (``<key>.readers``).
READER_BEAT = 1.0
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM)


class State(Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


OnCommit = Callable[[Committed], Awaitable[None]]
#: Blocking bookkeeping of a commit (the catalog record), run in the commit's own
#: worker-thread hop, before ``OnCommit``.
Record = Callable[[Committed], None]
OnFailure = Callable[[UpstreamError], None]


class Body(Protocol):
    """The bytes of one file as the upstream layer delivers them."""

    #: Declared total size, if any.
    size: int | None

    def chunks(self) -> AsyncIterator[bytes]: ...


#: Opens the file's :class:`Body` (raises :class:`UpstreamError`).
Fetch = Callable[[], AbstractAsyncContextManager[Body]]


class Readable(Protocol):
    """What the web layer needs to send a file that is not (yet) a blob."""

    size: int | None

    def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]: ...


class CacheUnavailable(Exception):
    """The cache cannot store this file now (disk full, unwritable)."""


class Download:
    """One file arriving in the cache, readable while it arrives."""

    def __init__(
        self,
        *,
        key: str,
        fetch: Fetch,
        expected: Mapping[str, str],
        expected_size: int | None,
        store: BlobStore,
        metrics: Metrics,
        on_commit: OnCommit,
        on_failure: OnFailure,
        on_unavailable: Callable[[Reason], None],
        label: str = "",
        max_size: int = 0,
        record: Record | None = None,
        keep_up_to: int = 0,
    ) -> None:
        self.key = key
        #: Files up to this size are received whole in memory, then written, verified
        #: and committed in one worker-thread hop; their readers get the body whole.
        self._keep_up_to = keep_up_to
        self._keeps = False
        #: A kept file's whole verified body, once committed.
        self.body: bytes | None = None
        #: Largest body accepted when neither upstream nor the page says the size
        #: (0: no limit); a body past its known size is cut either way.
        self._max_size = max_size
        #: What the logs call this download (``project/filename``).
        self.label = label or key
        self._fetch_body = fetch
        self._expected = dict(expected)
        self._expected_size = expected_size
        self._store = store
        self._metrics = metrics
        self._on_commit = on_commit
        self._record = record
        self._on_failure = on_failure
        self._on_unavailable = on_unavailable
        self.state = State.RUNNING
        self.error: UpstreamError | None = None
        self.committed: Committed | None = None
        #: Total size once known (``None`` if upstream sent no length).
        self.size: int | None = None
        self.written = 0
        self.temp_path = store.part_path(key)
        #: Whether this process downloads (``False``: it follows another worker).
        self.owner = False
        self._started = asyncio.Event()
        self._progress = asyncio.Event()
        #: Readers of this process sending its bytes now, and since when there is none.
        self.readers = 0
        self._unread_since = time.monotonic()

    # --- outcome for readers ---------------------------------------------------------------

    async def wait_started(self) -> None:
        """Wait until the size is known; raise if it failed before any byte."""
        await self._started.wait()
        if self.state is State.FAILED and self.written == 0:
            assert self.error is not None
            raise self.error

    async def kept_body(self) -> bytes | None:
        """A small file's whole verified body once committed, waiting as a reader
        (it counts against abandonment); ``None`` when this download does not keep its
        bytes (too large, another worker's, or committed before). Raises the download's
        error: nothing was sent yet, so the client gets a clean failure."""
        if not self._keeps:
            return None
        self.readers += 1
        try:
            while self.state is State.RUNNING:
                await self._progress.wait()
        finally:
            self.readers -= 1
            if self.readers == 0:
                self._unread_since = time.monotonic()
        if self.body is not None:  # verified (stored, or not storable but checked)
            return self.body
        if self.state is State.FAILED:
            assert self.error is not None
            raise self.error
        return self.body

    async def segments(
        self, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[tuple[BinaryIO, int, int], None]:
        """Ranges ``(file, offset, count)`` of ``[start, end)`` as they reach the disk.

        The web layer sends each with ``sendfile`` (no copy through Python). Raises
        :class:`UpstreamError` when the download fails; until the file verified, its
        final byte is held back. The file object stays valid after the temp file is
        renamed into the blob store.
        """
        pos = start
        handle: BinaryIO | None = None
        self.readers += 1
        try:
            while True:
                if self.state is State.FAILED:
                    assert self.error is not None
                    raise self.error
                if self.state is State.DONE:
                    assert self.committed is not None
                    stop = self.committed.size if end is None else min(end, self.committed.size)
                    if pos >= stop:
                        return
                    limit = stop
                else:
                    total = self.size if self.size is not None else self.written
                    limit = min(self.written, max(0, total - 1))
                    if end is not None:
                        limit = min(limit, end)
                if pos < limit:
                    if handle is None:
                        handle = await asyncio.to_thread(self._open)
                        if handle is None:
                            # The state may have changed while the thread ran (a failed
                            # download removes its temp file): look again before waiting.
                            if self.state is State.RUNNING:
                                await self._progress.wait()
                            continue
                    yield handle, pos, limit - pos
                    pos = limit
                elif end is not None and pos >= end:
                    return
                else:
                    await self._progress.wait()
        finally:
            self.readers -= 1
            if self.readers == 0:
                self._unread_since = time.monotonic()
            if handle is not None:
                handle.close()

    def _abandoned(self) -> bool:
        """Whether nobody has read this download for :data:`ABANDON_GRACE` seconds,
        here or in another worker (followers refresh ``<key>.readers``)."""
        now = time.monotonic()
        if self.readers or now - self._unread_since < ABANDON_GRACE:
            return False
        beat = _mtime(self._store.readers_path(self.key))
        return time.time() - beat > ABANDON_GRACE

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` as they become available (see :meth:`segments`)."""
        async with contextlib.aclosing(self.segments(start, end)) as segments:
            async for handle, offset, count in segments:
                done = 0
                while done < count:
                    size = min(CHUNK, count - done)
                    data = await asyncio.to_thread(os.pread, handle.fileno(), size, offset + done)
                    if not data:
                        raise UpstreamError(Reason.OTHER, "cached file shrank while read")
                    done += len(data)
                    yield data

    def _open(self) -> BinaryIO | None:
        """Open the committed blob, or the temp file while it is still arriving."""
        candidates = [self.temp_path]
        if self.committed is not None:
            candidates.insert(0, self.committed.path)
        for path in candidates:
            with contextlib.suppress(FileNotFoundError):
                return open(path, "rb")
        return None

    # --- the work --------------------------------------------------------------------------

    async def run(self) -> None:
        """Download (or follow another worker's download); never raises."""
        lock = DownloadLock(self._store.download_lock_path(self.key))
        try:
            token = uuid.uuid4().hex
            self.owner, existing = await asyncio.to_thread(self._claim, lock, token)
            if existing is not None:
                # Another worker committed it just before we took the lock.
                self._finish(existing)
            elif self.owner:
                await self._fetch(lock, token)
            else:
                await self._follow(lock.path)
        except asyncio.CancelledError:
            self._fail(UpstreamError(Reason.OTHER, "download cancelled (shutdown)"), count=False)
            raise
        except UpstreamError as exc:
            self._fail(exc, count=self.owner)
        except Exception as exc:  # every cause must reach the readers
            log.exception("download of %s failed unexpectedly", self.label)
            self._fail(UpstreamError(classify(exc), f"{type(exc).__name__}: {exc}"))
        finally:
            if self.owner and lock.held:  # (a fetch gives it up in its clean-up hop)
                await asyncio.to_thread(lock.release)
            self._started.set()
            self._notify()

    def _claim(self, lock: DownloadLock, token: str) -> tuple[bool, Committed | None]:
        """Take the download lock, then see whether the blob is there already (blocking;
        one worker-thread hop for what a cold file needs before it asks upstream). The
        state published now lets other workers follow at once (a small file's temp file
        appears only when it is whole)."""
        if not lock.try_acquire():
            return False, None
        sha = self._expected.get("sha256", "")
        if sha and self._store.exists(sha):
            return True, _existing(self._store, sha)
        lock.write_state({"token": token, "state": "running", "size": self._expected_size})
        return True, None

    async def _fetch(self, lock: DownloadLock, token: str) -> None:
        """Own the download: upstream -> temp file (a small file: memory) -> verify ->
        blob."""
        writer: BlobWriter | None = None
        committed: Committed | None = None
        self._metrics.inflight_downloads.inc()
        try:
            kept: bytes | None = None
            async with self._fetch_body() as body:
                size = body.size if body.size is not None else self._expected_size
                bound = self._bound(body.size)
                state = {"token": token, "state": "running", "size": size}
                if size is not None and size <= self._keep_up_to:
                    kept = await self._receive_whole(body, size, bound)
                else:
                    writer = await self._open_writer(size, lock, state)
                    self.size = size
                    self._started.set()
                    async for chunk in body.chunks():
                        self._check_bound(bound, writer.written + len(chunk))
                        await self._write(writer, chunk)
                        self.written = writer.written
                        self._notify()
                        self._check_wanted()
            try:
                if kept is not None:
                    try:
                        committed = await asyncio.to_thread(
                            self._store_whole, kept, lock, state, token
                        )
                    except OSError as exc:
                        # Not stored (disk full, read-only), but whole in memory: once
                        # it verifies there its readers get it, as a pass-through would.
                        check_bytes(kept, self._expected)
                        self.body = kept
                        raise self._storage_error(exc) from exc
                    self.body = kept
                else:
                    assert writer is not None
                    self._check_complete(writer.written)
                    committed = await asyncio.to_thread(self._commit, writer, lock, token)
            except IntegrityError as exc:
                raise UpstreamError(Reason(exc.kind), str(exc)) from exc
            except OSError as exc:
                raise self._storage_error(exc) from exc
            await self._on_commit(committed)
            self._finish(committed)
            self._notify()  # readers take the last byte now, not after the clean-up hop
        finally:
            self._metrics.inflight_downloads.dec()
            await asyncio.to_thread(self._clean_up, writer, committed, lock)

    async def _receive_whole(self, body: Body, size: int, bound: int | None) -> bytes:
        """A small body, whole, in memory (its readers wait for it verified)."""
        self.size = size
        self._keeps = True
        self._started.set()
        chunks: list[bytes] = []
        async for chunk in body.chunks():
            self._check_bound(bound, self.written + len(chunk))
            chunks.append(chunk)
            self.written += len(chunk)
            self._check_wanted()
        self._check_complete(self.written)
        return b"".join(chunks)

    def _check_bound(self, bound: int | None, total: int) -> None:
        if bound is not None and total > bound:
            raise UpstreamError(Reason.TOO_LARGE, f"body runs past {bound} bytes (its known size)")

    def _check_wanted(self) -> None:
        if self._abandoned():
            raise UpstreamError(Reason.OTHER, "no client reads this download any more: stopped")

    def _check_complete(self, received: int) -> None:
        if self.size is not None and received < self.size:
            raise UpstreamError(
                Reason.TRUNCATED, f"body ended after {received} of {self.size} bytes"
            )

    def _store_whole(
        self, data: bytes, lock: DownloadLock, state: dict[str, Any], token: str
    ) -> Committed:
        """Write, verify and commit a body received whole, and record it (blocking: one
        worker-thread hop from the last byte to the blob)."""
        writer = self._new_writer(len(data), lock, state)
        try:
            writer.write(data)
            return self._commit(writer, lock, token)
        finally:
            writer.discard()  # (a no-op once committed)

    def _commit(self, writer: BlobWriter, lock: DownloadLock, token: str) -> Committed:
        """Verify and commit the blob, tell other workers' followers it is there, and
        record it (blocking: one worker-thread hop for all three)."""
        committed = writer.commit(sync_dir=False)
        lock.write_state(
            {
                "token": token,
                "state": "done",
                "size": committed.size,
                "sha256": committed.sha256,
                "verified": committed.verified,
            }
        )
        if self._record is not None:
            self._record(committed)
        return committed

    def _clean_up(
        self, writer: BlobWriter | None, committed: Committed | None, lock: DownloadLock
    ) -> None:
        """After the download, committed or not: make the rename durable, drop the temp
        file and the readers' mark, give the lock up (blocking: one worker-thread hop)."""
        try:
            if committed is not None:
                with contextlib.suppress(OSError):
                    sync_directory(committed.path.parent)
            if writer is not None:
                writer.discard()
            self._store.readers_path(self.key).unlink(missing_ok=True)
        finally:
            lock.release()

    def _bound(self, declared: int | None) -> int | None:
        """The most bytes this body may have: the smaller of the size upstream declared
        and the one the page published, else ``max_size``. Raises when a known size is
        over ``max_size``."""
        known = [s for s in (declared, self._expected_size) if s is not None]
        if self._max_size and any(s > self._max_size for s in known):
            raise UpstreamError(
                Reason.TOO_LARGE,
                f"{max(known)} bytes is over limits.max_file_size ({self._max_size} bytes)",
            )
        if known:
            return min(known)
        return self._max_size or None

    async def _open_writer(
        self, size: int | None, lock: DownloadLock, state: dict[str, Any]
    ) -> BlobWriter:
        """Check the free space, open the temp file and publish ``state`` to followers,
        in one worker-thread hop."""
        try:
            return await asyncio.to_thread(self._new_writer, size, lock, state)
        except OSError as exc:
            raise self._storage_error(exc) from exc

    def _new_writer(
        self, size: int | None, lock: DownloadLock, state: dict[str, Any]
    ) -> BlobWriter:
        """The temp file of this download, after a free-space check, with ``state``
        published to followers (blocking)."""
        free, reserved = self._store.free_and_reserved(self.key)
        if size is not None and free - reserved < size + FREE_SPACE_RESERVE:
            raise OSError(
                errno.ENOSPC,
                f"not enough free space ({free} bytes free, {reserved} of them "
                "promised to downloads in flight)",
            )
        writer = self._store.writer(self._expected, size, self.temp_path)
        try:
            lock.write_state(state)
        except BaseException:
            writer.discard()
            raise
        return writer

    async def _write(self, writer: BlobWriter, chunk: bytes) -> None:
        try:
            await asyncio.to_thread(_append, writer, chunk)
        except OSError as exc:
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: OSError) -> UpstreamError:
        """Classify a local disk failure; new downloads pass through for a while."""
        reason = Reason.DISK_FULL if exc.errno in _NO_SPACE or exc.errno in _UNWRITABLE else None
        if reason is None:
            return UpstreamError(Reason.OTHER, f"cache write failed: {exc}")
        self._on_unavailable(reason)
        return UpstreamError(reason, f"cache cannot store the file: {exc.strerror or exc}")

    async def _follow(self, lock_path: Path) -> None:
        """Follow another worker's download of the same key through the shared disk."""
        deadline = time.monotonic() + FOLLOW_START_TIMEOUT
        state = None
        while state is None or "token" not in state:
            state = await asyncio.to_thread(DownloadLock.read_state, lock_path)
            if state is not None and "token" in state:
                break
            if not await asyncio.to_thread(DownloadLock.is_held, lock_path):
                raise UpstreamError(Reason.OTHER, "the worker downloading this file stopped")
            if time.monotonic() > deadline:
                raise UpstreamError(Reason.TIMEOUT, "waiting for another worker's download")
            await asyncio.sleep(FOLLOW_POLL)
        token = state["token"]
        self.size = state.get("size")
        self._started.set()
        beat = 0.0
        while True:
            if state.get("token") not in (None, token):
                if self.written:
                    # Bytes already read may differ from the new attempt's: abort.
                    raise UpstreamError(Reason.OTHER, "another worker restarted this download")
                token, self.size = state["token"], state.get("size")
            if state.get("state") == "done" and state.get("token") == token:
                sha = str(state["sha256"])
                try:
                    committed = await asyncio.to_thread(_existing, self._store, sha)
                except FileNotFoundError:
                    # A stale state of an earlier download whose blob was evicted since:
                    # wait for the current owner to publish its own state.
                    if not await asyncio.to_thread(DownloadLock.is_held, lock_path):
                        raise UpstreamError(
                            Reason.OTHER, "the worker downloading this file stopped"
                        ) from None
                    await asyncio.sleep(FOLLOW_POLL)
                    state = await asyncio.to_thread(DownloadLock.read_state, lock_path) or {}
                    continue
                self._finish(committed)
                return
            size = await asyncio.to_thread(_file_size, self.temp_path)
            if size is not None and size > self.written:
                self.written = size
                self._notify()
            if self.readers and time.monotonic() - beat >= READER_BEAT:
                # Tell the owner in the other worker that its bytes are still wanted.
                beat = time.monotonic()
                await asyncio.to_thread(_touch, self._store.readers_path(self.key))
            if not await asyncio.to_thread(DownloadLock.is_held, lock_path):
                # The owner ended: done (state says so on the next read) or failed/died.
                state = await asyncio.to_thread(DownloadLock.read_state, lock_path) or {}
                if state.get("token") == token and state.get("state") == "done":
                    continue
                raise UpstreamError(Reason.OTHER, "the worker downloading this file failed")
            await asyncio.sleep(FOLLOW_POLL)
            state = await asyncio.to_thread(DownloadLock.read_state, lock_path) or {}

    def _finish(self, committed: Committed) -> None:
        self.committed = committed
        self.size = committed.size
        self.written = committed.size
        self.state = State.DONE

    def _fail(self, error: UpstreamError, *, count: bool = True) -> None:
        self.state = State.FAILED
        self.error = error
        if count:
            self._on_failure(error)
        else:
            log.info("download of %s ended: %s", self.label, error.detail)

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()


class PassThrough:
    """Stream one file from upstream to one client, verified, without caching it."""

    def __init__(
        self,
        *,
        fetch: Fetch,
        expected: Mapping[str, str],
        size: int | None,
        on_failure: OnFailure,
        slot: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.size = size
        #: Held while the stream runs: it is an upstream download like any other.
        self._slot = slot or contextlib.nullcontext
        self._fetch_body = fetch
        self._expected = {k.lower(): v.lower() for k, v in expected.items()}
        self._on_failure = on_failure

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The whole file (ranges are not offered), last chunk held until verified
        against every published hash."""
        digests = {n: hashlib.new(n) for n in VERIFIABLE if n in self._expected}
        pending = b""
        received = 0
        try:
            async with self._slot(), self._fetch_body() as body:
                async for chunk in body.chunks():
                    for digest in digests.values():
                        digest.update(chunk)
                    received += len(chunk)
                    if pending:
                        yield pending
                    pending = chunk
        except UpstreamError as exc:
            self._on_failure(exc)
            raise
        error = None
        if self.size is not None and received != self.size:
            error = UpstreamError(Reason.TRUNCATED, f"got {received} of {self.size} bytes")
        else:
            wrong = [n for n, d in digests.items() if d.hexdigest() != self._expected[n]]
            if wrong:
                error = UpstreamError(
                    Reason.HASH_MISMATCH, f"{', '.join(wrong)} differs from the published one"
                )
        if error is not None:
            self._on_failure(error)
            raise error
        if pending:
            yield pending


def _append(writer: BlobWriter, chunk: bytes) -> None:
    writer.write(chunk)
    writer.flush()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.touch()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _existing(store: BlobStore, sha256: str) -> Committed:
    path = store.path(sha256)
    return Committed(sha256=sha256, size=path.stat().st_size, path=path, verified=True)


class DownloadManager:
    """At most one :class:`Download` per file key in this process."""

    def __init__(self, store: BlobStore, metrics: Metrics, *, max_file_size: int = 0) -> None:
        self._store = store
        self._metrics = metrics
        self._max_file_size = max_file_size
        self._active: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._degraded_until = 0.0

    @property
    def degraded(self) -> bool:
        """Whether the cache recently failed to store (new downloads pass through)."""
        return time.monotonic() < self._degraded_until

    def _mark_unavailable(self, reason: Reason) -> None:
        if not self.degraded:
            log.error("cache cannot store files (%s): passing downloads through", reason.value)
        self._degraded_until = time.monotonic() + DEGRADED_SECONDS

    def get_or_start(
        self,
        key: str,
        fetch: Fetch,
        expected: Mapping[str, str],
        expected_size: int | None,
        on_commit: OnCommit,
        on_failure: OnFailure,
        *,
        label: str = "",
        on_end: Callable[[], Awaitable[None]] | None = None,
        record: Record | None = None,
        keep_up_to: int = 0,
    ) -> tuple[Download, bool]:
        """The running download of ``key``, or a new one; the flag says if it is new.
        ``on_end`` runs when a new one ends (its slot is given back there); ``record``
        in the hop that commits it; a file up to ``keep_up_to`` bytes is kept in memory
        for its readers."""
        current = self._active.get(key)
        if current is not None:
            return current, False
        download = Download(
            key=key,
            fetch=fetch,
            expected=expected,
            expected_size=expected_size,
            store=self._store,
            metrics=self._metrics,
            on_commit=on_commit,
            on_failure=on_failure,
            on_unavailable=self._mark_unavailable,
            label=label,
            max_size=self._max_file_size,
            record=record,
            keep_up_to=keep_up_to,
        )
        self._active[key] = download
        task = asyncio.create_task(self._run(download, on_end), name=f"download:{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download, True

    def active(self, key: str) -> Download | None:
        """The download of ``key`` in progress in this process, if any."""
        return self._active.get(key)

    async def _run(
        self, download: Download, on_end: Callable[[], Awaitable[None]] | None
    ) -> None:
        try:
            await download.run()
        finally:
            self._active.pop(download.key, None)
            if on_end is not None:
                await on_end()

    async def close(self) -> None:
        """Cancel running downloads (shutdown); their temp files are removed."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
