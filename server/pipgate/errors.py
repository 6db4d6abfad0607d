"""Failure causes, classified once at the upstream boundary.

The same :class:`Reason` values flow into log lines, the
``pipgate_download_failures_total{reason}`` metric and client error bodies, so an
operator sees one vocabulary everywhere.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from enum import StrEnum

import aiohttp


class Reason(StrEnum):
    """The closed set of reasons a fetch from upstream can fail."""

    TIMEOUT = "timeout"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    PROXY_CONNECT = "proxy_connect"
    PROXY_AUTH = "proxy_auth"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    HASH_MISMATCH = "hash_mismatch"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    DISK_FULL = "disk_full"
    BAD_PAGE = "bad_page"
    #: A redirect to an origin outside the upstream's ``file_hosts``, from https to
    #: http, or too many of them.
    REDIRECT = "redirect"
    POLICY = "policy"
    OTHER = "other"


#: Reasons worth a retry by the client (and by pipgate): the next attempt may work.
TRANSIENT = frozenset(
    {
        Reason.TIMEOUT,
        Reason.DNS,
        Reason.CONNECT,
        Reason.TLS,
        Reason.PROXY_CONNECT,
        Reason.HTTP_5XX,
        Reason.TRUNCATED,
        Reason.HASH_MISMATCH,
        Reason.OTHER,
    }
)


class UpstreamError(Exception):
    """A failed upstream fetch with its classified cause.

    ``detail`` is a short human sentence without credentials; ``status`` is the
    upstream HTTP status when there was one.
    """

    def __init__(self, reason: Reason, detail: str, status: int | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        #: Seconds upstream asked us to wait (``Retry-After``), when it did.
        self.retry_after: float | None = None
        #: An HTTP reason phrase for the client (pip prints it: "403 Client Error:
        #: <phrase> for url"); ``None``: the standard one.
        self.phrase: str | None = None

    @classmethod
    def not_found(cls, detail: str) -> UpstreamError:
        """An upstream "no such project" (404)."""
        return cls(Reason.HTTP_4XX, detail, status=404)

    @property
    def client_status(self) -> int:
        """The HTTP status pipgate answers with.

        404 upstream stays 404 (uv treats it as "not in this index"); transient
        causes become 503, which pip and uv both retry (pip does not retry 504, and
        gives up on 502 after its budget); other failures are 502.
        """
        if self.status in (404, 410):
            return 404
        if self.reason is Reason.POLICY:
            return 403
        if self.reason in TRANSIENT:
            return 503
        return 502


def classify(exc: BaseException) -> Reason:
    """Map a client-side exception from aiohttp/asyncio/OS to a :class:`Reason`."""
    if isinstance(exc, UpstreamError):
        return exc.reason
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return Reason.PROXY_AUTH if exc.status == 407 else Reason.PROXY_CONNECT
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return Reason.PROXY_CONNECT
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Reason.DNS
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror):
        return Reason.DNS
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return Reason.TLS
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return Reason.TIMEOUT
    if isinstance(
        exc,
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError),
    ):
        return Reason.TRUNCATED
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientOSError, OSError)):
        return Reason.CONNECT
    return Reason.OTHER


def reason_for_status(status: int) -> Reason:
    """The reason class of an upstream HTTP error status."""
    return Reason.HTTP_5XX if status >= 500 else Reason.HTTP_4XX
