"""Handlers for the simple repository API: ``/simple/`` and ``/simple/<project>/``."""

from __future__ import annotations

import string
from urllib.parse import quote

from aiohttp import web

from pipgate.compat import environment_of
from pipgate.pages.bodies import list_etag
from pipgate.simple.names import is_valid_name, normalize
from pipgate.simple.negotiate import PageFormat, choose_format
from pipgate.web.files import send_file_path
from pipgate.web.http import accepts_gzip, text_error, wants_revalidation
from pipgate.web.ranges import etag_matches
from pipgate.web.state import services

#: PEP 503 pages vary by Accept (format) and Accept-Encoding (gzip).
VARY = "Accept, Accept-Encoding"
#: ... and, when their links come from a trusted reverse proxy, by what it forwarded.
FORWARDED_VARY = "X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Prefix"


async def root(request: web.Request) -> web.StreamResponse:
    """``GET /simple/``: the project list, streamed from its rendered files."""
    svc = services(request)
    fmt = _format(request)
    listing = await svc.pages.project_list(revalidate=_revalidate(request))
    svc.metrics.cache("page", listing.result)
    gz = accepts_gzip(request.headers.get("Accept-Encoding"))
    variant = ("json" if fmt.is_json else "html") + (".gz" if gz else "")
    etag = list_etag(listing.digest, fmt, gz)
    headers = _page_headers(fmt, etag, listing.age, svc.config.root_ttl, listing.result)
    if gz:
        headers["Content-Encoding"] = "gzip"
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=_without_type(headers))
    files = await svc.lists.files(listing)
    return await send_file_path(request, files[variant], headers)


async def project(request: web.Request) -> web.StreamResponse:
    """``GET /simple/<project>/``: one project page in HTML or JSON."""
    raw = request.match_info["project"]
    if not is_valid_name(raw):
        return text_error(404, "not a valid project name")
    name = normalize(raw)
    if name != raw:
        # PyPI redirects non-normalised names with 301; pip caches 301 forever, which
        # is right here because normalisation never changes.
        return _redirect(request, f"../{quote(name)}/")
    svc = services(request)
    fmt = _format(request)
    view = await svc.pages.project(name, revalidate=_revalidate(request))
    svc.metrics.cache("page", view.result)
    if view.page is None:
        response = text_error(
            404,
            view.missing or f"project {name} not found upstream",
            phrase=f"Not Found: {view.missing}" if view.missing else None,
        )
        response.headers["Cache-Control"] = f"max-age={int(svc.config.negative_ttl)}"
        return response
    base = link_base(request)
    gzip_ok = accepts_gzip(request.headers.get("Accept-Encoding"))
    rendered = await svc.renderer.render(view.page, view.digest, fmt, base, gzip_ok)
    # A page whose content changes by itself (a file leaving its release cooldown) is
    # fresh only until then in clients' caches too.
    ttl = svc.config.index_ttl
    if view.expires_in is not None:
        ttl = max(0.0, min(ttl, view.age + view.expires_in))  # max-age counts from Age
    headers = _page_headers(fmt, rendered.etag, view.age, ttl, view.result)
    if base is not None and not svc.config.public_url:
        # Links are built from the forwarded headers: a shared cache must keep apart
        # the pages different front ends asked for.
        headers["Vary"] = f"{VARY}, {FORWARDED_VARY}"
    if view.upstream is not None:
        # Which upstream owns the project (a merged page: the first that has it).
        headers["X-Pipgate-Upstream"] = view.upstream
    if rendered.gzipped:
        headers["Content-Encoding"] = "gzip"
    if etag_matches(request.headers.get("If-None-Match"), rendered.etag):
        return web.Response(status=304, headers=_without_type(headers))
    env = environment_of(request.headers.get("User-Agent"))
    if env is not None:
        # An installer that said what it runs on: note it if nothing new installs there.
        svc.incompatible.page_served(view.page, view.digest, env)
    response = web.Response(body=rendered.body, headers=headers)
    # The body is already encoded as negotiated; aiohttp must not touch it.
    return response


async def project_no_slash(request: web.Request) -> web.StreamResponse:
    """``/simple/<project>`` -> 301 to the normalised URL with its trailing slash."""
    raw = request.match_info["project"]
    if not is_valid_name(raw):
        return text_error(404, "not a valid project name")
    return _redirect(request, f"{quote(normalize(raw))}/")


async def simple_no_slash(request: web.Request) -> web.StreamResponse:
    """``/simple`` -> ``/simple/``."""
    return _redirect(request, "simple/")


async def not_found(request: web.Request) -> web.StreamResponse:
    """Anything else under ``/simple/``."""
    return text_error(404, "no such page")


def _format(request: web.Request) -> PageFormat:
    return choose_format(request.headers.get("Accept"), request.query.get("format"))


def _revalidate(request: web.Request) -> bool:
    return wants_revalidation(request.headers.get("Cache-Control"), request.headers.get("Pragma"))


def _redirect(request: web.Request, location: str) -> web.Response:
    # A relative Location keeps working behind a reverse proxy with a path prefix.
    if request.query_string:
        location = f"{location}?{request.query_string}"
    return web.Response(status=301, headers={"Location": location})


def link_base(request: web.Request) -> str | None:
    """The absolute base of file links, when configured or forwarded by a trusted
    reverse proxy; ``None``: relative links. Forwarded values that are not a scheme,
    a host and a path are ignored (a prefix can never extend the host name)."""
    svc = services(request)
    if svc.config.public_url:
        return svc.config.public_url
    if svc.config.trust_forwarded:
        proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        prefix = request.headers.get("X-Forwarded-Prefix", "").split(",")[0].strip().rstrip("/")
        if proto in ("http", "https") and _safe_host(host) and _safe_prefix(prefix):
            return f"{proto}://{host}{quote(prefix)}/"
    return None


def _safe_host(host: str) -> bool:
    return 0 < len(host) <= 255 and all(c.isalnum() or c in ".-:[]_" for c in host)


#: Characters of a URL path (RFC 3986 pchar and "/"), without "%" (quote() adds it).
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/")


def _safe_prefix(prefix: str) -> bool:
    """A path prefix: empty, or ``/`` followed by path characters (no ``//``, no dot
    segments)."""
    if not prefix:
        return True
    if len(prefix) > 200 or not prefix.startswith("/") or prefix.startswith("//"):
        return False
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return False
    return all(c in _PATH_CHARS for c in prefix)


def _page_headers(
    fmt: PageFormat, etag: str, age: float, ttl: float, result: str
) -> dict[str, str]:
    headers = {
        "Content-Type": fmt.content_type,
        "ETag": etag,
        "Vary": VARY,
        # Age lets pip's and uv's caches compute the remaining freshness exactly.
        "Cache-Control": f"max-age={int(ttl)}, public",
        "Age": str(int(age)),
        "X-Pipgate-Cache": result,
    }
    if result == "stale":
        headers["X-Pipgate-Stale"] = f"age={int(age)}"
        headers["Cache-Control"] = "max-age=0, must-revalidate"
    return headers


def _without_type(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("Content-Type", "Content-Encoding")}
