"""A ``pipgate export`` directory as an upstream (``url = "file:///mnt/transfer/simple/"``).

Pages are read from ``<project>/index.json`` (else ``index.html``), the project list
from ``index.html``, files from where the pages link them. Every path must stay inside
the export's directory (the parent of ``simple/``): a page cannot make pipgate read any
other local file. Everything else (parsing, hashes, the policy, the store) is the same
as for an upstream over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from pipgate.errors import Reason, UpstreamError
from pipgate.upstream.client import CHUNK, LIST_ACCEPT, PAGE_ACCEPT, PageFetch, UpstreamClient


class LocalIndexClient(UpstreamClient):
    """Reads an exported simple repository from disk."""

    @property
    def root(self) -> Path:
        """The export's directory: the parent of its ``simple/``."""
        return _path(self.index_url).parent

    async def start(self) -> None:
        """Nothing to open; the directory must exist."""
        if not self.offline and not await asyncio.to_thread(_path(self.index_url).is_dir):
            raise UpstreamError(Reason.CONNECT, f"no export directory at {self.index_url}")

    async def close(self) -> None:
        pass

    def _inside(self, url: str) -> Path:
        path = _path(url)
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            raise UpstreamError(
                Reason.BAD_PAGE, "a link leaves the export directory; refused"
            ) from None
        return path

    async def fetch_page(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = PAGE_ACCEPT,
    ) -> PageFetch:
        if self.offline:
            raise UpstreamError(Reason.OTHER, "offline: page not cached here", status=404)
        started = time.monotonic()
        directory = self._inside(url)
        for name, media in (
            ("index.json", "application/vnd.pypi.simple.v1+json"),
            ("index.html", "text/html"),
        ):
            try:
                body = await asyncio.to_thread((directory / name).read_bytes)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise UpstreamError(Reason.OTHER, f"cannot read {name}: {exc.strerror}") from None
            tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._observe("page", url, None, started, "ok", 200)
            if etag == tag:
                return PageFetch(status=304, url=url, etag=tag)
            return PageFetch(status=200, url=url, body=body, content_type=media, etag=tag)
        self._observe("page", url, None, started, "not_found", 404)
        return PageFetch(status=404, url=url)

    async def fetch_to_file(
        self,
        url: str,
        path: Path,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = LIST_ACCEPT,
    ) -> PageFetch:
        if self.offline:
            raise UpstreamError(Reason.OTHER, "offline: list not cached here", status=404)
        source = self._inside(url) / "index.html"
        try:
            await asyncio.to_thread(shutil.copyfile, source, path)
        except FileNotFoundError:
            return PageFetch(status=404, url=url)
        return PageFetch(status=200, url=url, content_type="text/html")

    async def fetch_small(self, url: str, *, limit: int = 16 << 20) -> bytes | None:
        if self.offline:
            raise UpstreamError(Reason.OTHER, "offline: metadata not cached here", status=404)
        path = self._inside(url)
        try:
            if (await asyncio.to_thread(path.stat)).st_size > limit:
                raise UpstreamError(Reason.TOO_LARGE, "metadata larger than the limit")
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    @asynccontextmanager
    async def open_file(  # type: ignore[override]
        self, url: str, start: int = 0
    ) -> AsyncIterator[_LocalFile]:
        if self.offline:
            raise UpstreamError(Reason.OTHER, "offline: file not cached here", status=404)
        path = self._inside(url)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise UpstreamError(Reason.HTTP_4XX, f"{path.name} is not in the export", 404) from None
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            if start:
                await asyncio.to_thread(handle.seek, start)
            yield _LocalFile(handle, size, self)
        finally:
            handle.close()


class _LocalFile:
    """A file of the export as the store's ``Body``."""

    def __init__(self, handle: BinaryIO, size: int, client: LocalIndexClient) -> None:
        self._handle = handle
        self.size: int | None = size
        self._client = client

    async def chunks(self) -> AsyncIterator[bytes]:
        fetched = self._client.metrics.bytes_fetched.labels(upstream=self._client.name)
        while chunk := await asyncio.to_thread(self._handle.read, CHUNK):
            fetched.inc(len(chunk))
            yield chunk


def _path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))
