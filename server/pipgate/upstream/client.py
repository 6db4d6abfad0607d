"""The HTTP client of one upstream: proxies, TLS, auth, redirects, timeouts, retries.

Each :class:`UpstreamClient` reads only its :class:`~pipgate.config.UpstreamConfig`
slice. Everything that talks to that upstream goes through it, so failures are
classified once (:mod:`pipgate.errors`) and every request is counted and logged once.
Requests go through the proxies :class:`~pipgate.upstream.proxy.ProxyChooser` offers,
failing over when a proxy cannot be reached or refuses the tunnel. Redirects are
followed here, hop by hop, each checked against the upstream's origins
(:mod:`.origins`); credentials go to the index's own origin only. Failed fetches are
retried with exponential backoff and jitter (honouring ``Retry-After``), bounded in
count and in total time, and only for causes a retry can cure; repeated connectivity
failures mark the upstream down (:mod:`.health`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin

import aiofiles
import aiohttp

from pipgate.config import Config, UpstreamConfig, origin_of
from pipgate.errors import Reason, UpstreamError, classify, reason_for_status
from pipgate.logs import request_id
from pipgate.metrics import Metrics
from pipgate.redact import redact_url
from pipgate.upstream.health import UpstreamHealth
from pipgate.upstream.origins import OriginRule
from pipgate.upstream.proxy import Proxy, ProxyChooser, basic_authorization

log = logging.getLogger("pipgate.upstream")

#: PEP 658 metadata files above this size are refused.
MAX_METADATA_BYTES = 16 << 20
#: Longest ``Retry-After`` pipgate waits out inside one client request.
MAX_RETRY_AFTER = 10.0
#: Redirect hops followed for one request.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: HTTP statuses worth retrying (RFC 9110 transient ones plus 429).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Causes that never get better by asking again.
NOT_RETRYABLE = frozenset(
    {
        Reason.TOO_LARGE,
        Reason.HTTP_4XX,
        Reason.BAD_PAGE,
        Reason.PROXY_AUTH,
        Reason.POLICY,
        Reason.REDIRECT,
    }
)

T = TypeVar("T")
Opener = AbstractAsyncContextManager[aiohttp.ClientResponse]

PAGE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
#: The project list is requested as HTML first: it can be parsed incrementally.
LIST_ACCEPT = (
    "application/vnd.pypi.simple.v1+html, text/html;q=0.9, "
    "application/vnd.pypi.simple.v1+json;q=0.5"
)


@dataclass(frozen=True)
class ClientLimits:
    """The server-wide bounds on what one fetch may bring (``[limits]``)."""

    #: Largest page body, counted after decompression (a gzip bomb counts in full).
    max_page_size: int = 64 << 20
    #: Largest project list body, after decompression, and its total fetch time.
    max_list_size: int = 512 << 20
    list_timeout: float = 600.0

    @classmethod
    def of(cls, config: Config) -> ClientLimits:
        return cls(config.max_page_size, config.max_list_size, config.list_timeout)


@dataclass(frozen=True)
class PageFetch:
    """The outcome of one page request: 200 (body), 304 (unchanged) or 404 (absent)."""

    status: int
    #: The URL the page finally came from (after redirects): the base of its links.
    url: str
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None


def build_ssl_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    """The TLS context for an upstream: system CAs (``SSL_CERT_FILE`` honoured by
    ``ssl``), plus ``REQUESTS_CA_BUNDLE`` and ``ca_bundle``, or only ``ca_bundle`` in
    replace mode; a client certificate for mutual TLS; verification off only when
    asked."""
    if upstream.ca_bundle is not None and upstream.ca_bundle_mode == "replace":
        context = ssl.create_default_context(cafile=str(upstream.ca_bundle))
    else:
        context = ssl.create_default_context()
        for extra in (upstream.secrets.env_ca_bundle, upstream.ca_bundle):
            if extra is not None:
                context.load_verify_locations(cafile=str(extra))
    if upstream.client_cert is not None:
        key = str(upstream.client_key) if upstream.client_key else None
        context.load_cert_chain(str(upstream.client_cert), key)
    if not upstream.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamClient:
    """One upstream simple index reached over one aiohttp session."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        metrics: Metrics,
        *,
        offline: bool = False,
        limits: ClientLimits | None = None,
    ) -> None:
        self.config = upstream
        self.limits = limits or ClientLimits()
        #: Offline: no request ever leaves (the page pipeline asks for none; this is
        #: the guarantee).
        self.offline = offline
        self.name = upstream.name
        self.index_url = upstream.url
        self.metrics = metrics
        #: Pages, metadata and project lists; files have a session (and pool) of their
        #: own, so slow downloads never starve page fetches.
        self._session: aiohttp.ClientSession | None = None
        self._file_session: aiohttp.ClientSession | None = None
        #: A page fetch waits here for a pooled connection, before its timeouts start:
        #: waiting for a slot never looks like a slow (or down) upstream.
        self._page_slots = asyncio.Semaphore(upstream.page_connections)
        self.proxies = ProxyChooser(
            upstream.proxy,
            auth=upstream.secrets.proxy_auth,
            env=upstream.secrets.env_proxies,
            cooldown=upstream.proxy_cooldown,
        )
        self.health = UpstreamHealth(
            upstream.name, upstream.down_after, upstream.down_cooldown, metrics
        )
        #: Where file links and redirects may point: the index's origin + file_hosts.
        self.origins = OriginRule(upstream.file_origins)
        self._origin = upstream.origin
        self._page_timeout = aiohttp.ClientTimeout(
            total=upstream.page_timeout,
            sock_connect=upstream.connect_timeout,
            sock_read=upstream.read_timeout,
        )
        # Files: no total (a 900 MB wheel may take long), only connect and idle read.
        self._file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=upstream.connect_timeout, sock_read=upstream.read_timeout
        )
        self._list_timeout = aiohttp.ClientTimeout(
            total=self.limits.list_timeout,
            sock_connect=upstream.connect_timeout,
            sock_read=upstream.read_timeout,
        )
        metrics.initialise(self.name)

    async def start(self) -> None:
        """Open the session (inside the running loop)."""
        if self.offline:
            return
        if not self.config.verify:
            log.warning(
                "TLS VERIFICATION IS OFF for upstream %s (verify = false): "
                "anyone on the path can serve forged packages",
                self.name,
            )
        if self._sends_credentials_in_clear():
            log.warning(
                "upstream %s is plain http and pipgate sends it credentials: anyone on "
                "the path can read them; use https",
                self.name,
            )
        tls = build_ssl_context(self.config)
        self._session = self._new_session(tls, self.config.page_connections)
        self._file_session = self._new_session(tls, self.config.file_connections)
        for proxy in self.proxies.proxies:
            self.metrics.proxy_up.labels(proxy=proxy.label).set(1)
        self.metrics.upstream_up.labels(upstream=self.name).set(1)

    @staticmethod
    def _new_session(tls: ssl.SSLContext, connections: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=60, ssl=tls),
            # Proxies and NO_PROXY are decided by ProxyChooser from the config.
            trust_env=False,
            # An index has no business setting cookies; none are kept or sent back.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "pipgate"},
        )

    def _sends_credentials_in_clear(self) -> bool:
        secrets = self.config.secrets
        return bool(secrets.basic_auth or secrets.token) and self.index_url.startswith("http:")

    async def close(self) -> None:
        """Close the sessions and their pooled connections."""
        for session in (self._session, self._file_session):
            if session is not None:
                await session.close()
        self._session = self._file_session = None

    def session(self, kind: str) -> aiohttp.ClientSession:
        """The session for requests of ``kind`` (files and lists: the file pool)."""
        session = self._file_session if kind in ("file", "root") else self._session
        if session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return session

    @property
    def is_down(self) -> bool:
        """Whether the upstream is in its cool-down after repeated failures."""
        return self.health.is_down

    @property
    def last_error(self) -> UpstreamError | None:
        return self.health.last_error

    @property
    def tls_verification(self) -> bool:
        return self.config.verify

    def project_url(self, name: str) -> str:
        """The upstream page URL of a normalised project name."""
        return f"{self.index_url}{name}/"

    def proxy_label(self) -> str | None:
        """The proxy requests to the index go through now (for failure reports)."""
        proxies = self.proxies.for_url(self.index_url)
        return proxies[0].label if proxies and proxies[0] is not None else None

    # --- one request: redirects, then proxies --------------------------------------------

    @asynccontextmanager
    async def _get(
        self,
        url: str,
        *,
        kind: str,
        headers: dict[str, str],
        timeouts: aiohttp.ClientTimeout,
        auto_decompress: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``url``, following redirects hop by hop; each hop must stay on the
        upstream's origins and never go from https to http. Pages and metadata first
        wait for a slot of their pool (outside every timeout)."""
        slots = self._page_slots if kind in ("page", "metadata") else None
        if slots is None:
            async with self._follow(url, kind, headers, timeouts, auto_decompress) as resp:
                yield resp
            return
        async with slots, self._follow(url, kind, headers, timeouts, auto_decompress) as resp:
            yield resp

    @asynccontextmanager
    async def _follow(
        self,
        url: str,
        kind: str,
        headers: dict[str, str],
        timeouts: aiohttp.ClientTimeout,
        auto_decompress: bool,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            resp = await self._send(
                current,
                kind=kind,
                headers=headers,
                timeouts=timeouts,
                auto_decompress=auto_decompress,
            )
            location = resp.headers.get("Location") if resp.status in REDIRECT_STATUSES else None
            if location is None:
                try:
                    yield resp
                finally:
                    resp.release()
                return
            resp.release()
            try:
                target = urljoin(current, location.strip()).partition("#")[0]
            except ValueError:
                raise UpstreamError(Reason.REDIRECT, "redirect to an unparseable URL") from None
            self.origins.check_redirect(current, target)
            current = target
        raise UpstreamError(
            Reason.REDIRECT, f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}"
        )

    async def _send(
        self,
        url: str,
        *,
        kind: str,
        headers: dict[str, str],
        timeouts: aiohttp.ClientTimeout,
        auto_decompress: bool,
    ) -> aiohttp.ClientResponse:
        """One GET through the first proxy that works (or directly); every attempt is
        timed, counted by outcome and logged as one event line."""
        headers = dict(headers)
        if origin_of(url) == self._origin:
            # Credentials go to the index's own origin only, never to a files CDN.
            secrets = self.config.secrets
            if secrets.token:
                headers["Authorization"] = f"Bearer {secrets.token}"
            elif secrets.basic_auth:
                headers["Authorization"] = basic_authorization(*secrets.basic_auth)
        failure: UpstreamError | None = None
        for proxy in self.proxies.for_url(url):
            request_headers, proxy_headers = headers, None
            if proxy is not None and proxy.authorization:
                if url.startswith("https:"):
                    # Sent with CONNECT only: the tunnelled request never carries it.
                    proxy_headers = {"Proxy-Authorization": proxy.authorization}
                else:
                    request_headers = {**headers, "Proxy-Authorization": proxy.authorization}
            started = time.monotonic()
            try:
                resp = await self.session(kind).get(
                    url,
                    headers=request_headers,
                    timeout=timeouts,
                    auto_decompress=auto_decompress,
                    allow_redirects=False,
                    proxy=proxy.url if proxy else None,
                    proxy_headers=proxy_headers,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._observe(kind, url, proxy, started, classify(exc).value)
                if not isinstance(
                    exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)
                ):
                    raise
                reason = classify(exc)
                if reason is Reason.PROXY_AUTH and proxy is not None:
                    failure = _proxy_auth_error(proxy)
                else:
                    failure = UpstreamError(reason, _describe(exc, url, proxy))
                self._proxy_failed(proxy, failure)
                continue
            self._observe(kind, url, proxy, started, _outcome(resp.status), resp.status)
            if proxy is not None and resp.status == 407:
                resp.release()
                failure = _proxy_auth_error(proxy)
                self._proxy_failed(proxy, failure)
                continue
            if proxy is not None:
                self._proxy_ok(proxy)
            return resp
        assert failure is not None
        raise failure

    def _observe(
        self,
        kind: str,
        url: str,
        proxy: Proxy | None,
        started: float,
        outcome: str,
        status: int | None = None,
    ) -> None:
        """Count and time one request to upstream, and log its event line."""
        elapsed = time.monotonic() - started
        self.metrics.upstream_done(self.name, kind, outcome, elapsed)
        if not log.isEnabledFor(logging.INFO):
            return
        shown = redact_url(url)
        log.info(
            "upstream %s %s -> %s in %.3fs%s",
            kind,
            shown,
            status if status is not None else outcome,
            elapsed,
            f" via {proxy.label}" if proxy else "",
            extra={
                "event": "upstream_fetch",
                "kind": kind,
                "url": shown,
                "status": status,
                "outcome": outcome,
                "duration": round(elapsed, 6),
                "upstream": self.name,
                "proxy": proxy.label if proxy else None,
                "request_id": request_id.get(),
            },
        )

    def _proxy_failed(self, proxy: Proxy | None, error: UpstreamError) -> None:
        if proxy is None:
            return
        self.proxies.failed(proxy)
        self.metrics.proxy_up.labels(proxy=proxy.label).set(0)
        log.warning(
            "proxy %s failed (%s: %s); trying the next one if any",
            proxy.label,
            error.reason.value,
            error.detail,
        )

    def _proxy_ok(self, proxy: Proxy) -> None:
        if not self.proxies.is_up(proxy):
            log.info("proxy %s works again", proxy.label)
        self.proxies.succeeded(proxy)
        self.metrics.proxy_up.labels(proxy=proxy.label).set(1)

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
        headers = _conditional({"Accept": accept}, etag, last_modified)

        async def attempt() -> PageFetch:
            async with self._get(
                url, kind="page", headers=headers, timeouts=self._page_timeout
            ) as resp:
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
                body = await _read_limited(resp, self.limits.max_page_size, "page")
                return PageFetch(
                    status=200,
                    url=str(resp.url),
                    body=body,
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
        accept: str = LIST_ACCEPT,
    ) -> PageFetch:
        """GET a (large) page straight into ``path`` without holding it in memory,
        within ``limits.max_list_size`` (after decompression) and ``list_timeout``."""
        headers = _conditional({"Accept": accept}, etag, last_modified)
        limit = self.limits.max_list_size

        async def attempt() -> PageFetch:
            async with self._get(
                url, kind="root", headers=headers, timeouts=self._list_timeout
            ) as resp:
                if resp.status in (404, 410):
                    return PageFetch(status=404, url=str(resp.url))
                if resp.status == 304:
                    return PageFetch(status=304, url=str(resp.url), etag=etag)
                _raise_for_status(resp)
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise UpstreamError(Reason.TOO_LARGE, f"project list of {declared} bytes")
                written = 0
                async with aiofiles.open(path, "wb") as out:
                    async for chunk in resp.content.iter_chunked(1 << 18):
                        written += len(chunk)
                        if written > limit:
                            raise UpstreamError(
                                Reason.TOO_LARGE,
                                f"project list larger than limits.max_list_size ({limit} bytes)",
                            )
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
            headers = {"Accept-Encoding": "identity"}
            async with self._get(
                url, kind="metadata", headers=headers, timeouts=self._page_timeout
            ) as resp:
                if resp.status in (404, 410):
                    return None
                _raise_for_status(resp)
                body = await _read_limited(resp, limit, "metadata")
                self.metrics.bytes_fetched.labels(upstream=self.name).inc(len(body))
                return body

        return await self._with_retries(attempt, what="metadata", url=url)

    @asynccontextmanager
    async def open_file(self, url: str, start: int = 0) -> AsyncIterator[FileStream]:
        """A distribution file as one stream of bytes (from byte ``start``: a takeover
        of a download another replica began), resumed after breaks.

        Opening is retried like any fetch; a connection that breaks mid-body is
        continued with ``Range`` (see :class:`FileStream`), so the reader sees one body.
        """
        stream = FileStream(self, url)
        try:
            await stream.open(start)
            yield stream
        finally:
            await stream.close()

    @asynccontextmanager
    async def open_range(
        self, url: str, offset: int, validator: str | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open ``url`` for streaming (identity encoding, no total timeout); with
        ``offset`` it asks for the rest (``Range``, guarded by ``If-Range``)."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator

        async def attempt() -> tuple[Opener, aiohttp.ClientResponse]:
            opener = self._get(
                url,
                kind="file",
                headers=headers,
                timeouts=self._file_timeout,
                auto_decompress=False,
            )
            resp = await opener.__aenter__()
            if resp.status >= 400:
                await opener.__aexit__(None, None, None)
                _raise_for_status(resp)
            return opener, resp

        opener, resp = await self._with_retries(attempt, what="file", url=url)
        try:
            yield resp
        finally:
            await opener.__aexit__(None, None, None)

    # --- retries and health --------------------------------------------------------------

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], *, what: str, url: str) -> T:
        if self.offline:
            raise UpstreamError(Reason.OTHER, f"offline: {what} not cached here", status=404)
        self.health.check()
        tries = 1 + self.config.retries
        deadline = time.monotonic() + self.config.retry_max_time
        for number in range(1, tries + 1):
            try:
                result = await attempt()
            except UpstreamError as exc:
                error = exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = UpstreamError(classify(exc), _describe(exc, url, None))
            else:
                self.health.succeeded()
                return result
            delay = error.retry_after if error.retry_after is not None else _backoff(number)
            if number == tries or not _retryable(error) or time.monotonic() + delay > deadline:
                self.health.failed(error)
                raise error
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


#: Bytes read from upstream per chunk.
CHUNK = 256 * 1024
#: How many times one download is resumed after its connection broke.
MAX_RESUMES = 5
#: Causes after which a download is resumed from the byte it reached.
RESUMABLE = frozenset({Reason.TRUNCATED, Reason.TIMEOUT, Reason.CONNECT, Reason.OTHER})


class FileStream:
    """The bytes of one upstream file, continued with ``Range`` when the connection
    breaks: a 206 must start where the last body stopped, and a 200 (upstream ignored
    the range, or ``If-Range`` no longer matched) is read past the bytes already given.
    The reader sees one uninterrupted sequence; the whole file is verified by its
    hash downstream, so a resumed body is held to the same rule as any other.
    """

    def __init__(self, client: UpstreamClient, url: str) -> None:
        self._client = client
        self.url = url
        #: Total size when upstream declared it (``Content-Length`` of the first answer).
        self.size: int | None = None
        #: Bytes given to the reader so far.
        self.received = 0
        self.resumes = 0
        self._validator: str | None = None
        self._opener: Opener | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._skip = 0

    async def open(self, start: int = 0) -> None:
        """Open the first response, from byte ``start`` (raises :class:`UpstreamError`);
        :attr:`size` is the whole file's size either way."""
        resp = await self._enter(start)
        self._validator = _strong_validator(resp)
        if not start:
            self.size = resp.content_length
            return
        self._skip = _resume_skip(resp, start)
        self.received = start
        if resp.status == 200:
            self.size = resp.content_length
        else:
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            self.size = int(total) if total.isdigit() else None

    async def _enter(self, offset: int) -> aiohttp.ClientResponse:
        opener = self._client.open_range(self.url, offset, self._validator)
        resp = await opener.__aenter__()
        self._opener, self._resp = opener, resp
        return resp

    async def close(self) -> None:
        """Release the current response."""
        opener, self._opener, self._resp = self._opener, None, None
        if opener is not None:
            await opener.__aexit__(None, None, None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, across resumes; raises :class:`UpstreamError`."""
        fetched = self._client.metrics.bytes_fetched.labels(upstream=self._client.name)
        while True:
            try:
                chunk = await self._read()
            except UpstreamError as exc:
                await self._resume(exc)
                continue
            if chunk is None:
                return
            fetched.inc(len(chunk))
            if self._skip:
                if len(chunk) <= self._skip:
                    self._skip -= len(chunk)
                    continue
                chunk, self._skip = chunk[self._skip :], 0
            self.received += len(chunk)
            yield chunk

    async def _read(self) -> bytes | None:
        """The next chunk of the current response; ``None`` at the end of the file."""
        assert self._resp is not None
        try:
            data = await self._resp.content.read(CHUNK)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(classify(exc), _describe(exc, self.url, None)) from exc
        if data:
            return data
        if self._skip:
            raise UpstreamError(Reason.TRUNCATED, "resumed body ended before the resume point")
        if self.size is not None and self.received < self.size:
            raise UpstreamError(
                Reason.TRUNCATED, f"body ended after {self.received} of {self.size} bytes"
            )
        return None

    async def _resume(self, error: UpstreamError) -> None:
        """Reopen from :attr:`received`, or raise ``error`` when that cannot help."""
        if self.received == 0 or error.reason not in RESUMABLE or self.resumes >= MAX_RESUMES:
            raise error
        self.resumes += 1
        client = self._client
        client.metrics.download_resumes.labels(upstream=client.name).inc()
        log.warning(
            "download of %s broke at byte %d (%s); resuming with Range (%d/%d)",
            redact_url(self.url),
            self.received,
            error.reason.value,
            self.resumes,
            MAX_RESUMES,
        )
        await self.close()
        await asyncio.sleep(min(2.0, 0.1 * 2**self.resumes))
        resp = await self._enter(self.received)
        self._skip = _resume_skip(resp, self.received)


def _strong_validator(resp: aiohttp.ClientResponse) -> str | None:
    """The validator for ``If-Range`` (RFC 9110 §13.1.5: a strong ETag or a date)."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _resume_skip(resp: aiohttp.ClientResponse, offset: int) -> int:
    """Bytes to drop from a resume response: 0 for a 206 starting at ``offset``,
    ``offset`` for a 200 (upstream sent the whole file again)."""
    if resp.status == 200:
        return offset
    if resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")
        unit, _, spec = content_range.partition(" ")
        first = spec.split("-", 1)[0]
        if unit.strip().lower() == "bytes" and first.isdigit() and int(first) == offset:
            return 0
        raise UpstreamError(Reason.BAD_PAGE, f"resume got Content-Range {content_range!r}")
    raise UpstreamError(reason_for_status(resp.status), f"resume answered {resp.status}")


def _proxy_auth_error(proxy: Proxy) -> UpstreamError:
    given = "rejected the credentials" if proxy.auth else "wants credentials"
    return UpstreamError(
        Reason.PROXY_AUTH,
        f"proxy authentication required: {proxy.label} {given} "
        "(set upstream.proxy_auth_env or upstream.proxy_auth_file)",
        status=407,
    )


def _outcome(status: int) -> str:
    """The bounded ``outcome`` label of an upstream response status."""
    if status < 300:
        return "ok"
    if status == 304:
        return "not_modified"
    if status in (404, 410):
        return "not_found"
    if status < 400:
        return "ok"
    return reason_for_status(status).value


def _retryable(error: UpstreamError) -> bool:
    if error.status is not None and error.reason is not Reason.PROXY_AUTH:
        return error.status in RETRY_STATUSES
    return error.reason not in NOT_RETRYABLE


def _backoff(number: int) -> float:
    """Exponential backoff with full jitter: up to 0.2 s, 0.4 s, 0.8 s ... (capped)."""
    return random.uniform(0, min(4.0, 0.2 * (2 ** (number - 1))))


def _conditional(
    headers: dict[str, str], etag: str | None, last_modified: str | None
) -> dict[str, str]:
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise UpstreamError(Reason.TOO_LARGE, f"{what} of {declared} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise UpstreamError(
                Reason.TOO_LARGE, f"{what} larger than the limit of {limit} bytes (decompressed)"
            )
    return bytes(body)


def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    error = UpstreamError(
        reason_for_status(resp.status),
        f"upstream answered HTTP {resp.status} for {redact_url(str(resp.url))}",
        status=resp.status,
    )
    retry_after = resp.headers.get("Retry-After", "").strip()
    if retry_after.isdigit():
        error.retry_after = min(float(retry_after), MAX_RETRY_AFTER)
    raise error


def _describe(exc: BaseException, url: str, proxy: Proxy | None) -> str:
    text = str(exc) or type(exc).__name__
    # aiohttp messages may embed URLs with credentials: replace them.
    text = text.replace(url, redact_url(url))
    where = f" via proxy {proxy.label}" if proxy is not None else ""
    return f"{type(exc).__name__}{where}: {text}"
