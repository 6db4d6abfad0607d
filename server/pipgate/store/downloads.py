"""In-flight downloads shared by every reader of the same file.

One :class:`Download` fetches a file from upstream into a temp blob while hashing it.
Any number of readers follow it: they read what is already on disk, then wait for
more. A reader never receives the file's last byte before the whole file verified,
so when the hash turns out wrong every open response can still be aborted short of
a complete body and no client installs a bad file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from enum import Enum
from pathlib import Path

import aiofiles

from pipgate.errors import Reason, UpstreamError, classify
from pipgate.metrics import Metrics
from pipgate.redact import redact_url
from pipgate.store.blobs import BlobStore, BlobWriter, Committed, IntegrityError
from pipgate.upstream.client import UpstreamClient

log = logging.getLogger("pipgate.downloads")

CHUNK = 256 * 1024


class State(Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


OnCommit = Callable[[Committed], Awaitable[None]]


class Download:
    """One upstream fetch of one file, readable while it runs."""

    def __init__(
        self,
        *,
        key: str,
        url: str,
        expected: Mapping[str, str],
        expected_size: int | None,
        store: BlobStore,
        client: UpstreamClient,
        metrics: Metrics,
        on_commit: OnCommit,
    ) -> None:
        self.key = key
        self.url = url
        self._expected = dict(expected)
        self._expected_size = expected_size
        self._store = store
        self._client = client
        self._metrics = metrics
        self._on_commit = on_commit
        self.state = State.RUNNING
        self.error: UpstreamError | None = None
        self.committed: Committed | None = None
        #: Total size once upstream's headers arrived (``None`` if it sent no length).
        self.size: int | None = None
        self.written = 0
        self.temp_path: Path | None = None
        self._started = asyncio.Event()
        self._progress = asyncio.Event()

    # --- the fetch -----------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch, verify and commit; never raises (the outcome is in ``state``)."""
        writer: BlobWriter | None = None
        self._metrics.inflight_downloads.inc()
        try:
            async with self._client.open_file(self.url) as resp:
                size = resp.content_length
                if size is None:
                    size = self._expected_size
                writer = await asyncio.to_thread(self._store.writer, self._expected, size)
                self.temp_path = writer.path
                self.size = size
                self._started.set()
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await asyncio.to_thread(_write, writer, chunk)
                        self.written = writer.written
                        self._notify()
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise UpstreamError(Reason.DISK_FULL, "cache disk is full") from exc
                    raise
            self.committed = await asyncio.to_thread(writer.commit)
            await self._on_commit(self.committed)
            self.state = State.DONE
        except IntegrityError as exc:
            self._fail(UpstreamError(Reason(exc.kind), str(exc)))
        except UpstreamError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(UpstreamError(Reason.OTHER, "download cancelled (shutdown)"))
            raise
        except Exception as exc:
            self._fail(UpstreamError(classify(exc), f"{type(exc).__name__}: {exc}"))
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.discard)
            self._metrics.inflight_downloads.dec()
            self._started.set()
            self._notify()

    def _fail(self, error: UpstreamError) -> None:
        self.state = State.FAILED
        self.error = error
        self._metrics.failure(self._client.name, error.reason)
        log.warning(
            "download failed: %s reason=%s detail=%s",
            redact_url(self.url),
            error.reason.value,
            error.detail,
        )

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    # --- readers -------------------------------------------------------------------------

    async def wait_started(self) -> None:
        """Wait until the size is known; raise the error if it failed before that."""
        await self._started.wait()
        if self.state is State.FAILED and self.written == 0:
            assert self.error is not None
            raise self.error

    async def wait_done(self) -> Committed:
        """Wait for the outcome; raise the error on failure."""
        while self.state is State.RUNNING:
            await self._progress.wait()
        if self.state is State.FAILED:
            assert self.error is not None
            raise self.error
        assert self.committed is not None
        return self.committed

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the file as they become available.

        Raises :class:`UpstreamError` when the download fails; until it verified, the
        final byte of the file is held back.
        """
        pos = start
        handle = None
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
                    # Hold back the last byte of the file until it verified.
                    total = self.size if self.size is not None else self.written
                    limit = min(self.written, max(0, total - 1))
                    if end is not None:
                        limit = min(limit, end)
                if pos < limit:
                    if handle is None:
                        handle = await self._open()
                        if handle is None:
                            await self._progress.wait()
                            continue
                    await handle.seek(pos)
                    data = await handle.read(min(CHUNK, limit - pos))
                    if not data:
                        await self._progress.wait()
                        continue
                    pos += len(data)
                    yield data
                elif end is not None and pos >= end:
                    return
                else:
                    await self._progress.wait()
        finally:
            if handle is not None:
                await handle.close()

    async def _open(self) -> aiofiles.threadpool.binary.AsyncBufferedReader | None:
        """Open the temp file, or the committed blob once it was renamed."""
        candidates = []
        if self.committed is not None:
            candidates.append(self.committed.path)
        if self.temp_path is not None:
            candidates.append(self.temp_path)
        for path in candidates:
            with contextlib.suppress(FileNotFoundError):
                return await aiofiles.open(path, "rb")
        return None


def _write(writer: BlobWriter, chunk: bytes) -> None:
    writer.write(chunk)
    writer.flush()


class DownloadManager:
    """Starts at most one :class:`Download` per file key in this process."""

    def __init__(self, store: BlobStore, client: UpstreamClient, metrics: Metrics) -> None:
        self._store = store
        self._client = client
        self._metrics = metrics
        self._active: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get_or_start(
        self,
        key: str,
        url: str,
        expected: Mapping[str, str],
        expected_size: int | None,
        on_commit: OnCommit,
    ) -> tuple[Download, bool]:
        """The running download of ``key``, or a new one; the flag says if it is new."""
        current = self._active.get(key)
        if current is not None:
            return current, False
        download = Download(
            key=key,
            url=url,
            expected=expected,
            expected_size=expected_size,
            store=self._store,
            client=self._client,
            metrics=self._metrics,
            on_commit=on_commit,
        )
        self._active[key] = download
        task = asyncio.create_task(self._run(download), name=f"download:{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download, True

    async def _run(self, download: Download) -> None:
        try:
            await download.run()
        finally:
            self._active.pop(download.key, None)

    async def close(self) -> None:
        """Cancel running downloads (shutdown); their temp files are removed."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
