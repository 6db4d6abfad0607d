"""The HTTP client for one upstream index: proxies, TLS, auth, timeouts, retries, health.

Everything that talks to upstream goes through :class:`UpstreamClient`, so failures are
classified once (:mod:`pipgate.errors`) and counted once. Each request goes through the
proxies :class:`~pipgate.upstream.proxy.ProxyChooser` offers, failing over when a proxy
cannot be reached or refuses the tunnel. Failed fetches are retried with exponential
backoff and jitter (honouring ``Retry-After``), bounded in count and in total time,
and only for causes a retry can cure. After ``down_after`` consecutive failed fetches
the upstream is marked down for ``down_cooldown``: requests then fail at once (cached
pages and files keep being served) until it is probed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aiofiles
import aiohttp

from pipgate.config import Config
from pipgate.errors import Reason, UpstreamError, classify, reason_for_status
from pipgate.failures import Failure, FailureLog
from pipgate.logs import request_id
from pipgate.metrics import Metrics
from pipgate.redact import redact_url, upstream_label
from pipgate.upstream.proxy import Proxy, ProxyChooser, basic_authorization

log = logging.getLogger("pipgate.upstream")

#: Project pages above this size are refused (``too_large``): torch's page is ~5 MB.
MAX_PAGE_BYTES = 128 << 20
#: PEP 658 metadata files above this size are refused.
MAX_METADATA_BYTES = 16 << 20
#: Longest ``Retry-After`` pipgate waits out inside one client request.
MAX_RETRY_AFTER = 10.0
#: HTTP statuses worth retrying (RFC 9110 transient ones plus 429).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Causes that never get better by asking again.
NOT_RETRYABLE = frozenset(
    {Reason.TOO_LARGE, Reason.HTTP_4XX, Reason.BAD_PAGE, Reason.PROXY_AUTH, Reason.POLICY}
)

T = TypeVar("T")
Opener = AbstractAsyncContextManager[aiohttp.ClientResponse]

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


def build_ssl_context(config: Config) -> ssl.SSLContext:
    """The TLS context for upstream: system CAs (``SSL_CERT_FILE`` honoured by ``ssl``),
    plus ``REQUESTS_CA_BUNDLE`` and ``ca_bundle``, or only ``ca_bundle`` in replace mode;
    a client certificate for mutual TLS; verification off only when asked."""
    if config.ca_bundle is not None and config.ca_bundle_mode == "replace":
        context = ssl.create_default_context(cafile=str(config.ca_bundle))
    else:
        context = ssl.create_default_context()
        for extra in (config.secrets.env_ca_bundle, config.ca_bundle):
            if extra is not None:
                context.load_verify_locations(cafile=str(extra))
    if config.client_cert is not None:
        key = str(config.client_key) if config.client_key else None
        context.load_cert_chain(str(config.client_cert), key)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamClient:
    """One upstream simple index reached over one aiohttp session."""

    def __init__(
        self, config: Config, metrics: Metrics, failures: FailureLog | None = None
    ) -> None:
        self.index_url = config.upstream
        self.name = upstream_label(config.upstream)
        self._config = config
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self.proxies = ProxyChooser(
            config.proxy,
            auth=config.secrets.proxy_auth,
            env=config.secrets.env_proxies,
            cooldown=config.proxy_cooldown,
        )
        self._origin = _origin(config.upstream)
        self._page_timeout = aiohttp.ClientTimeout(
            total=config.page_timeout,
            sock_connect=config.connect_timeout,
            sock_read=config.read_timeout,
        )
        # Files: no total (a 900 MB wheel may take long), only connect and idle read.
        self._file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        )
        self._consecutive_failures = 0
        self._down_until = 0.0
        #: The last failure, for ``/readyz`` (reason and a credential-free detail).
        self.last_error: UpstreamError | None = None
        self._failures = failures
        self._records: set[asyncio.Task[None]] = set()
        self._last_record: asyncio.Task[None] | None = None
        metrics.initialise(self.name)

    async def start(self) -> None:
        """Open the session (inside the running loop)."""
        if not self._config.verify:
            log.warning(
                "TLS VERIFICATION IS OFF for upstream %s (upstream.verify = false): "
                "anyone on the path can serve forged packages",
                self.name,
            )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=64, ttl_dns_cache=60, ssl=build_ssl_context(self._config)
            ),
            # Proxies and NO_PROXY are decided by ProxyChooser from the config.
            trust_env=False,
            headers={"User-Agent": "pipgate"},
        )
        for proxy in self.proxies.proxies:
            self._metrics.proxy_up.labels(proxy=proxy.label).set(1)
        self._metrics.upstream_up.labels(upstream=self.name).set(1)

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

    @property
    def is_down(self) -> bool:
        """Whether the upstream is in its cool-down after repeated failures."""
        return time.monotonic() < self._down_until

    @property
    def tls_verification(self) -> bool:
        return self._config.verify

    def project_url(self, name: str) -> str:
        """The upstream page URL of a normalised project name."""
        return f"{self.index_url}{name}/"

    # --- one request through the proxies -----------------------------------------------

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
        """GET ``url`` through the first proxy that works (or directly); every attempt is
        timed, counted by outcome and logged as one event line."""
        headers = dict(headers)
        if _origin(url) == self._origin:
            # Credentials go to the index's own origin only, never to a files CDN.
            if self._config.secrets.token:
                headers["Authorization"] = f"Bearer {self._config.secrets.token}"
            elif self._config.secrets.basic_auth:
                headers["Authorization"] = basic_authorization(*self._config.secrets.basic_auth)
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
                resp = await self.session.get(
                    url,
                    headers=request_headers,
                    timeout=timeouts,
                    auto_decompress=auto_decompress,
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
            try:
                yield resp
            finally:
                resp.release()
            return
        assert failure is not None
        raise failure

    def report_failure(
        self, error: UpstreamError, *, project: str | None = None, file: str | None = None
    ) -> None:
        """Count a failed fetch, log one event line, and keep it for ``/-/failures``.

        The one place where a failure's closed-set reason reaches the metric, the log
        and the failure list together.
        """
        self._metrics.failure(self.name, error.reason)
        proxies = self.proxies.for_url(self.index_url)
        proxy = proxies[0].label if proxies and proxies[0] is not None else None
        log.warning(
            "fetch failed: reason=%s upstream=%s proxy=%s project=%s file=%s detail=%s",
            error.reason.value,
            self.name,
            proxy or "-",
            project or "-",
            file or "-",
            error.detail,
            extra={
                "event": "fetch_failed",
                "reason": error.reason.value,
                "upstream": self.name,
                "proxy": proxy,
                "project": project,
                "file": file,
            },
        )
        if self._failures is not None:
            record = Failure(
                time=time.time(),
                reason=error.reason.value,
                detail=error.detail,
                upstream=self.name,
                project=project,
                file=file,
                proxy=proxy,
            )
            # Written off the loop, one after the other, so the list keeps their order.
            previous = self._last_record
            task = asyncio.get_running_loop().create_task(self._append(previous, record))
            self._last_record = task
            self._records.add(task)
            task.add_done_callback(self._records.discard)

    async def _append(self, previous: asyncio.Task[None] | None, record: Failure) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        assert self._failures is not None
        try:
            await self._failures.record(record)
        except Exception:  # the list is a convenience: never let it break a request
            log.exception("could not record a failure for /-/failures")

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
        self._metrics.upstream_requests.labels(
            upstream=self.name, kind=kind, outcome=outcome
        ).inc()
        self._metrics.upstream_duration.labels(upstream=self.name, kind=kind).observe(elapsed)
        log.info(
            "upstream %s %s -> %s in %.3fs%s",
            kind,
            redact_url(url),
            status if status is not None else outcome,
            elapsed,
            f" via {proxy.label}" if proxy else "",
            extra={
                "event": "upstream_fetch",
                "kind": kind,
                "url": redact_url(url),
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
        self._metrics.proxy_up.labels(proxy=proxy.label).set(0)
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
        self._metrics.proxy_up.labels(proxy=proxy.label).set(1)

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
                body = await _read_limited(resp, MAX_PAGE_BYTES, "page")
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
        accept: str = ROOT_ACCEPT,
    ) -> PageFetch:
        """GET a (large) page straight into ``path`` without holding it in memory."""
        headers = _conditional({"Accept": accept}, etag, last_modified)

        async def attempt() -> PageFetch:
            async with self._get(
                url, kind="root", headers=headers, timeouts=self._file_timeout
            ) as resp:
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
            headers = {"Accept-Encoding": "identity"}
            async with self._get(
                url, kind="metadata", headers=headers, timeouts=self._page_timeout
            ) as resp:
                if resp.status in (404, 410):
                    return None
                _raise_for_status(resp)
                return await _read_limited(resp, limit, "metadata")

        return await self._with_retries(attempt, what="metadata", url=url)

    @asynccontextmanager
    async def open_file(
        self, url: str, *, offset: int = 0, validator: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a distribution file for streaming (identity encoding, no total timeout).

        With ``offset`` > 0 it asks for the rest of the file (``Range``, guarded by
        ``If-Range: validator`` when one is known): the status is 206 when upstream
        resumed, 200 when it sends the whole file again. Opening is retried like any
        fetch; errors while reading the body surface as :class:`UpstreamError`.
        """
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
        except UpstreamError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(classify(exc), _describe(exc, url, None)) from exc
        finally:
            await opener.__aexit__(None, None, None)

    # --- retries and health --------------------------------------------------------------

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], *, what: str, url: str) -> T:
        if self.is_down:
            raise UpstreamError(
                Reason.CONNECT,
                f"upstream {self.name} is marked down after repeated failures "
                f"({self.last_error.reason.value if self.last_error else 'unknown'}); "
                "it will be probed again shortly",
            )
        tries = 1 + self._config.retries
        deadline = time.monotonic() + self._config.retry_max_time
        for number in range(1, tries + 1):
            try:
                result = await attempt()
            except UpstreamError as exc:
                error = exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = UpstreamError(classify(exc), _describe(exc, url, None))
            else:
                self._healthy()
                return result
            delay = error.retry_after if error.retry_after is not None else _backoff(number)
            if (
                number == tries
                or not _retryable(error)
                or time.monotonic() + delay > deadline
            ):
                self._failed(error)
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

    def _healthy(self) -> None:
        if self._consecutive_failures >= self._config.down_after:
            log.info("upstream %s is reachable again", self.name)
        self._consecutive_failures = 0
        self._down_until = 0.0
        self._metrics.upstream_up.labels(upstream=self.name).set(1)

    def _failed(self, error: UpstreamError) -> None:
        self.last_error = error
        if not _counts_against_health(error):
            return
        self._consecutive_failures += 1
        if self._consecutive_failures >= self._config.down_after:
            self._down_until = time.monotonic() + self._config.down_cooldown
            self._metrics.upstream_up.labels(upstream=self.name).set(0)
            log.error(
                "upstream %s marked down for %.0fs after %d consecutive failures (last: %s)",
                self.name,
                self._config.down_cooldown,
                self._consecutive_failures,
                error.reason.value,
            )


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


def _counts_against_health(error: UpstreamError) -> bool:
    """Connectivity failures make an upstream "down"; a 404 or a bad file does not."""
    return error.reason in (
        Reason.TIMEOUT,
        Reason.DNS,
        Reason.CONNECT,
        Reason.TLS,
        Reason.PROXY_CONNECT,
        Reason.PROXY_AUTH,
        Reason.HTTP_5XX,
    )


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
            raise UpstreamError(Reason.TOO_LARGE, f"{what} larger than the limit")
    return bytes(body)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)


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
