"""The HTTP client for one upstream index: sessions, timeouts, retries, error classes.

Everything that talks to upstream goes through :class:`UpstreamClient`, so failures are
classified once (:mod:`pipgate.errors`) and counted once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiofiles
import aiohttp

from pipgate.config import Config
from pipgate.errors import Reason, UpstreamError, classify, reason_for_status
from pipgate.metrics import Metrics
from pipgate.redact import redact_url, upstream_label

log = logging.getLogger("pipgate.upstream")

#: Project pages above this size are refused (``too_large``): torch's page is ~5 MB.
MAX_PAGE_BYTES = 128 << 20
#: PEP 658 metadata files above this size are refused.
MAX_METADATA_BYTES = 16 << 20
#: Longest ``Retry-After`` pipgate waits out inside one client request.
MAX_RETRY_AFTER = 5.0
#: HTTP statuses worth retrying (RFC 9110 transient ones plus 429).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")

PAGE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
#: The root list is requested as HTML first: it can be parsed incrementally.
ROOT_ACCEPT = (
    "application/vnd.pypi.simple.v1+html, text/html;q=0.9, "
    "application/vnd.pypi.simple.v1+json;q=0.5"
)


@dataclass(frozen=True)
class PageFetch:
    """The outcome of one page request: 200 (body), 304 (unchanged) or 404 (absent)."""

    status: int
    url: str
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None


class UpstreamClient:
    """One upstream simple index reached over one aiohttp session."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.index_url = config.upstream
        self.name = upstream_label(config.upstream)
        self._config = config
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._page_timeout = aiohttp.ClientTimeout(
            total=config.page_timeout,
            sock_connect=config.connect_timeout,
            sock_read=config.read_timeout,
        )
        # Files: no total (a 900 MB wheel may take long), only connect and idle read.
        self._file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        )

    async def start(self) -> None:
        """Open the session (inside the running loop)."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60),
            # Honour HTTP(S)_PROXY / NO_PROXY and ~/.netrc when nothing else is configured.
            trust_env=True,
            headers={"User-Agent": "pipgate"},
        )

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    def project_url(self, name: str) -> str:
        """The upstream page URL of a normalised project name."""
        return f"{self.index_url}{name}/"

    # --- pages ---------------------------------------------------------------------------

    async def fetch_page(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = PAGE_ACCEPT,
    ) -> PageFetch:
        """GET an index page, conditionally when validators are given, with retries."""
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified

        async def attempt() -> PageFetch:
            async with self.session.get(url, headers=headers, timeout=self._page_timeout) as resp:
                if resp.status in (404, 410):
                    return PageFetch(status=404, url=str(resp.url))
                if resp.status == 304:
                    return PageFetch(
                        status=304,
                        url=str(resp.url),
                        etag=resp.headers.get("ETag", etag),
                        last_modified=resp.headers.get("Last-Modified", last_modified),
                    )
                _raise_for_status(resp)
                declared = resp.content_length
                if declared is not None and declared > MAX_PAGE_BYTES:
                    raise UpstreamError(Reason.TOO_LARGE, f"page of {declared} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise UpstreamError(Reason.TOO_LARGE, "page larger than the limit")
                return PageFetch(
                    status=200,
                    url=str(resp.url),
                    body=bytes(body),
                    content_type=resp.headers.get("Content-Type", ""),
                    etag=resp.headers.get("ETag"),
                    last_modified=resp.headers.get("Last-Modified"),
                )

        return await self._with_retries(attempt, what="page", url=url)

    async def fetch_to_file(
        self,
        url: str,
        path: Path,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = ROOT_ACCEPT,
    ) -> PageFetch:
        """GET a (large) page straight into ``path`` without holding it in memory.

        Returns a :class:`PageFetch` with an empty body; the body is in ``path``.
        """
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._config.connect_timeout,
            sock_read=self._config.read_timeout,
        )

        async def attempt() -> PageFetch:
            async with self.session.get(url, headers=headers, timeout=timeout) as resp:
                if resp.status in (404, 410):
                    return PageFetch(status=404, url=str(resp.url))
                if resp.status == 304:
                    return PageFetch(status=304, url=str(resp.url), etag=etag)
                _raise_for_status(resp)
                async with aiofiles.open(path, "wb") as out:
                    async for chunk in resp.content.iter_chunked(1 << 18):
                        await out.write(chunk)
                return PageFetch(
                    status=200,
                    url=str(resp.url),
                    content_type=resp.headers.get("Content-Type", ""),
                    etag=resp.headers.get("ETag"),
                    last_modified=resp.headers.get("Last-Modified"),
                )

        return await self._with_retries(attempt, what="root", url=url)

    # --- files ---------------------------------------------------------------------------

    async def fetch_small(self, url: str, *, limit: int = MAX_METADATA_BYTES) -> bytes | None:
        """GET a small file (PEP 658 metadata) whole; ``None`` when upstream has none."""

        async def attempt() -> bytes | None:
            async with self.session.get(
                url,
                headers={"Accept-Encoding": "identity"},
                timeout=self._page_timeout,
            ) as resp:
                if resp.status in (404, 410):
                    return None
                _raise_for_status(resp)
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > limit:
                        raise UpstreamError(Reason.TOO_LARGE, "metadata larger than the limit")
                return bytes(body)

        return await self._with_retries(attempt, what="metadata", url=url)

    @asynccontextmanager
    async def open_file(
        self, url: str, *, offset: int = 0
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a distribution file for streaming (identity encoding, no total timeout).

        The response status is 200, or 206 when ``offset`` > 0 and upstream honoured it.
        Errors are raised as :class:`UpstreamError` (404 keeps its status).
        """
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self.session.get(
                url, headers=headers, timeout=self._file_timeout, auto_decompress=False
            ) as resp:
                _raise_for_status(resp)
                yield resp
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(classify(exc), _describe(exc, url)) from exc

    # --- retries -------------------------------------------------------------------------

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], *, what: str, url: str) -> T:
        tries = 1 + self._config.retries
        for number in range(1, tries + 1):
            try:
                return await attempt()
            except UpstreamError as exc:
                error = exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                error = UpstreamError(classify(exc), _describe(exc, url))
            if number == tries or not _retryable(error):
                raise error
            delay = error.retry_after if error.retry_after is not None else _backoff(number)
            log.info(
                "upstream %s %s failed (%s), retry %d/%d in %.2fs",
                what,
                redact_url(url),
                error.reason.value,
                number,
                tries - 1,
                delay,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _retryable(error: UpstreamError) -> bool:
    if error.status is not None:
        return error.status in RETRY_STATUSES
    return error.reason not in (Reason.TOO_LARGE, Reason.HTTP_4XX, Reason.BAD_PAGE)


def _backoff(number: int) -> float:
    """Exponential backoff with full jitter: 0.2 s, 0.4 s, 0.8 s ... (capped)."""
    return random.uniform(0, min(4.0, 0.2 * (2 ** (number - 1))))


def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    error = UpstreamError(
        reason_for_status(resp.status),
        f"upstream answered HTTP {resp.status} for {redact_url(str(resp.url))}",
        status=resp.status,
    )
    retry_after = resp.headers.get("Retry-After", "")
    if retry_after.isdigit():
        error.retry_after = min(float(retry_after), MAX_RETRY_AFTER)
    raise error


def _describe(exc: BaseException, url: str) -> str:
    text = str(exc) or type(exc).__name__
    # aiohttp messages may embed the URL with credentials: replace them.
    text = text.replace(url, redact_url(url))
    return f"{type(exc).__name__}: {text}"
