"""Handlers for the simple repository API: ``/simple/`` and ``/simple/<project>/``."""

from __future__ import annotations

import asyncio
import string
from urllib.parse import quote

from aiohttp import web

from pipgate.compat import environment_of
from pipgate.pages.bodies import list_etag
from pipgate.simple.model import ProjectPage
from pipgate.simple.names import is_valid_name, normalize
from pipgate.simple.negotiate import PageFormat, choose_format
from pipgate.web.files import send_file_path
from pipgate.web.hot_pages import HotPage, Key
from pipgate.web.http import accepts_gzip, text_error, wants_revalidation
from pipgate.web.ranges import etag_matches
from pipgate.web.state import Services, services

#: PEP 503 pages vary by Accept (format) and Accept-Encoding (gzip).
VARY = "Accept, Accept-Encoding"
#: ... and, when their links come from a trusted reverse proxy, by what it forwarded.
FORWARDED_VARY = "X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Prefix"


async def root(request: web.Request) -> web.StreamResponse:
    """``GET /simple/``: the project list, streamed from its rendered files."""
    svc = services(request)
    fmt = _format(request)
    gz = accepts_gzip(request.headers.get("Accept-Encoding"))
    variant = ("json" if fmt.is_json else "html") + (".gz" if gz else "")
    revalidate = _revalidate(request)
    hot = None if revalidate else svc.hot_lists.get(variant)
    if hot is not None:
        entry, now = hot
        svc.metrics.cache("page", "hit")
        headers = {**entry.headers, "Age": entry.age_at(now)}
        if etag_matches(request.headers.get("If-None-Match"), entry.etag):
            return web.Response(status=304, headers=_without_type(headers))
        return await send_file_path(request, entry.path, headers, size=entry.size)
    listing = await svc.pages.project_list(revalidate=revalidate)
    svc.metrics.cache("page", listing.result)
    etag = list_etag(listing.digest, fmt, gz)
    headers = _page_headers(fmt, etag, listing.age, svc.config.root_ttl, listing.result)
    if gz:
        headers["Content-Encoding"] = "gzip"
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=_without_type(headers))
    files = await svc.lists.files(listing)
    if listing.result in _FRESH:
        hot_headers = _page_headers(fmt, etag, listing.age, svc.config.root_ttl, "hit")
        del hot_headers["Age"]
        if gz:
            hot_headers["Content-Encoding"] = "gzip"
        size = await asyncio.to_thread(lambda: files[variant].stat().st_size)
        svc.hot_lists.put(
            variant,
            path=files[variant],
            size=size,
            headers=hot_headers,
            etag=etag,
            age=listing.age,
            fresh_for=svc.config.root_ttl - listing.age,
        )
        return await send_file_path(request, files[variant], headers, size=size)
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
    base = link_base(request)
    gzip_ok = accepts_gzip(request.headers.get("Accept-Encoding"))
    revalidate = _revalidate(request)
    key = (name, fmt.variant, gzip_ok, base)
    if not revalidate:
        answer = hot_answer(request, svc, key)
        if answer is not None:
            return answer

    view = await svc.pages.project(name, revalidate=revalidate)
    svc.metrics.cache("page", view.result)
    if view.page is None:
        response = text_error(
            404,
            view.missing or f"project {name} not found upstream",
            phrase=f"Not Found: {view.missing}" if view.missing else None,
        )
        response.headers["Cache-Control"] = f"max-age={int(svc.config.negative_ttl)}"
        return response
    rendered = await svc.renderer.render(view.page, view.digest, fmt, base, gzip_ok)
    # A page whose content changes by itself (a file leaving its release cooldown) is
    # fresh only until then in clients' caches too.
    ttl = svc.config.index_ttl
    if view.expires_in is not None:
        ttl = max(0.0, min(ttl, view.age + view.expires_in))  # max-age counts from Age

    def headers_as(result: str) -> dict[str, str]:
        headers = _page_headers(fmt, rendered.etag, view.age, ttl, result)
        if base is not None and not svc.config.public_url:
            # Links are built from the forwarded headers: a shared cache must keep
            # apart the pages different front ends asked for.
            headers["Vary"] = f"{VARY}, {FORWARDED_VARY}"
        if view.upstream is not None:
            # Which upstream owns the project (a merged page: the first that has it).
            headers["X-Pipgate-Upstream"] = view.upstream
        if rendered.gzipped:
            headers["Content-Encoding"] = "gzip"
        return headers

    headers = headers_as(view.result)
    if view.result in _FRESH:
        # Asked again within the second, this is a hit: answered from memory.
        hot_headers = headers_as("hit")
        del hot_headers["Age"]
        svc.hot_pages.put(
            key,
            body=rendered.body,
            headers=hot_headers,
            etag=rendered.etag,
            age=view.age,
            fresh_for=ttl - view.age,
            page=view.page,
            digest=view.digest,
        )
    return _answer(request, svc, rendered.body, headers, rendered.etag, view.page, view.digest)


def hot_answer(request: web.Request, svc: Services, key: Key) -> web.Response | None:
    """The answer to a page request from the memo of finished answers, if it holds
    one for ``key`` (counted as a page cache hit); ``None`` otherwise."""
    hot = svc.hot_pages.get(key)
    if hot is None:
        return None
    return answer_from(request, svc, *hot)


def answer_from(request: web.Request, svc: Services, entry: HotPage, now: float) -> web.Response:
    """The answer made from a memo entry (a page cache hit)."""
    svc.metrics.cache("page", "hit")
    headers = {**entry.headers, "Age": entry.age_at(now)}
    return _answer(request, svc, entry.body, headers, entry.etag, entry.page, entry.digest)


def hot_served(request: web.BaseRequest, svc: Services, entry: HotPage) -> None:
    """What answering ``entry``'s 200 from the memo counts and notes, for an answer the
    hot path writes itself (:mod:`pipgate.web.hot_path`)."""
    svc.metrics.cache("page", "hit")
    _note_environment(request, svc, entry.page, entry.digest)


def hot_key(request: web.Request, svc: Services, name: str) -> Key | None:
    """The memo key of a request for the page of normalised ``name`` that a hot answer
    may serve: ``None`` when it asks to revalidate, or names a format in its query, or
    its links would come from forwarded headers (the handler decides those)."""
    if request.query_string or _revalidate(request):
        return None
    config = svc.config
    if config.trust_forwarded and not config.public_url:
        return None
    fmt = choose_format(request.headers.get("Accept"), None)
    gzip_ok = accepts_gzip(request.headers.get("Accept-Encoding"))
    return (name, fmt.variant, gzip_ok, config.public_url)


#: Results whose page is fresh: answers made from them may be reused (a stale page
#: is not: every request for it should try upstream again).
_FRESH = frozenset({"hit", "miss", "revalidated"})


def _answer(
    request: web.Request,
    svc: Services,
    body: bytes,
    headers: dict[str, str],
    etag: str,
    page: ProjectPage,
    digest: str,
) -> web.Response:
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=_without_type(headers))
    _note_environment(request, svc, page, digest)
    # The body is already encoded as negotiated; aiohttp must not touch it.
    return web.Response(body=body, headers=headers)


def _note_environment(
    request: web.BaseRequest, svc: Services, page: ProjectPage, digest: str
) -> None:
    env = environment_of(request.headers.get("User-Agent"))
    if env is not None:
        # An installer that said what it runs on: note it if nothing new installs there.
        svc.incompatible.page_served(page, digest, env)


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
    # A relative Location keeps working behind a reverse proxy with a path prefix. The
    # query goes on as it came, still percent-encoded (decoded, a %00 would be a control
    # character in the header).
    query = request.rel_url.raw_query_string
    if query:
        location = f"{location}?{query}"
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
