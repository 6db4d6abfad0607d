"""Small pure helpers for request headers and plain responses."""

from __future__ import annotations

import functools
import re
from http import HTTPStatus

from aiohttp import web

from pipgate.errors import Reason, UpstreamError


def wants_revalidation(cache_control: str | None, pragma: str | None = None) -> bool:
    """Whether a client asked to bypass cached pages.

    uv ``--refresh`` sends ``Cache-Control: no-cache``; pip ``--refresh-package`` sends
    ``max-age=0``.
    """
    if pragma and "no-cache" in pragma.lower():
        return True
    if not cache_control:
        return False
    for directive in cache_control.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-cache" or (name == "max-age" and value.strip().strip('"') == "0"):
            return True
    return False


#: RFC 9110 §12.4.2 qvalue: 0 to 1 with at most three decimals, ASCII digits only.
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


@functools.lru_cache(maxsize=512)  # a few header values arrive all day
def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (with q > 0).

    A malformed ``q`` (``nan``, ``1e400``, ``-1``) makes that item unacceptable rather
    than acceptable: identity is always safe to send.
    """
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = "1"
        for param in params:
            name, eq, value = param.partition("=")
            if eq and name.strip().lower() == "q":
                q = value.strip()
        return bool(_QVALUE.match(q)) and float(q) > 0
    return False


def content_type_for(filename: str) -> str:
    """The Content-Type of a distribution file; never a Content-Encoding.

    (``mimetypes`` would call ``.tar.gz`` gzip-encoded, and clients would unpack it.)
    """
    lower = filename.lower()
    if lower.endswith((".whl", ".zip", ".egg")):
        return "application/zip"
    if lower.endswith((".tar.gz", ".tgz")):
        return "application/gzip"
    if lower.endswith(".tar.bz2"):
        return "application/x-bzip2"
    if lower.endswith(".tar.xz"):
        return "application/x-xz"
    return "application/octet-stream"


def text_error(
    status: int, message: str, reason: Reason | None = None, phrase: str | None = None
) -> web.Response:
    """A short plain-text error: one line, no traceback, no credentials; ``phrase``
    replaces the standard HTTP reason phrase (pip prints it)."""
    headers = {"Cache-Control": "no-store"}
    if reason is not None:
        headers["X-Pipgate-Reason"] = reason.value
    # One line, whatever the message holds: a name from a request path or an upstream
    # page may carry newlines, or lone surrogates that UTF-8 cannot encode.
    line = "".join(c if c.isprintable() else " " for c in message)
    return web.Response(
        status=status,
        reason=reason_phrase(phrase) if phrase else None,
        body=f"pipgate: {line}\n".encode("utf-8", "backslashreplace"),
        content_type="text/plain",
        charset="utf-8",
        headers=headers,
    )


def reason_phrase(text: str) -> str:
    """``text`` fit for an HTTP status line: printable ASCII, one line, bounded."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:300] if len(cleaned) <= 300 else cleaned[:297] + "..."


def upstream_error(exc: UpstreamError) -> web.Response:
    """The answer for a failed (or refused) fetch: its status, cause and sentence, the
    cause also in the HTTP reason phrase (what pip prints: "503 Server Error: <phrase>
    for url")."""
    status = exc.client_status
    if exc.reason is Reason.POLICY:
        message = exc.detail
    else:
        message = f"upstream fetch failed: {exc.reason.value}: {exc.detail}"
    phrase = exc.phrase or f"{HTTPStatus(status).phrase}: pipgate: {exc.reason.value}: {exc.detail}"
    return text_error(status, message, exc.reason, phrase)
