"""Rendered project pages with their ETags, memoised by content.

A page body depends only on (content digest, format, link base, encoding), so the
rendered bytes are cached under that key and the strong ETag is derived from it:
``If-None-Match`` can be answered without rendering, and every variant (HTML, JSON,
gzip) has its own strong ETag, as caches require (a weak one would stop uv from
revalidating).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from pipgate.links import LinkBuilder
from pipgate.simple.model import ProjectPage
from pipgate.simple.negotiate import PageFormat
from pipgate.simple.render import render_project_html, render_project_json

#: Bodies smaller than this are not worth compressing.
GZIP_MIN_BYTES = 1024
#: Memory bound of the rendered-page cache.
CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class Rendered:
    """A response body and its strong ETag."""

    body: bytes
    etag: str
    gzipped: bool


def page_etag(digest: str, fmt: PageFormat, base: str | None, gzipped: bool) -> str:
    """The strong ETag of one variant of a page."""
    parts = [digest[:32], fmt.variant]
    if base is not None:
        parts.append(hashlib.sha256(base.encode()).hexdigest()[:8])
    if gzipped:
        parts.append("gz")
    return '"' + "-".join(parts) + '"'


class PageRenderer:
    """Renders pages to bytes, off the event loop, with a bounded memo."""

    def __init__(self, capacity_bytes: int = CACHE_BYTES) -> None:
        self._capacity = capacity_bytes
        self._used = 0
        self._memo: OrderedDict[tuple[str, str, str | None, bool], Rendered] = OrderedDict()

    async def render(
        self, page: ProjectPage, digest: str, fmt: PageFormat, base: str | None, gzip_ok: bool
    ) -> Rendered:
        """The body of ``page`` in ``fmt`` with file links rebased on ``base``."""
        key = (digest, fmt.variant, base, gzip_ok)
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            return hit
        rendered = await asyncio.to_thread(_render, page, digest, fmt, base, gzip_ok)
        self._remember(key, rendered)
        return rendered

    def _remember(self, key: tuple[str, str, str | None, bool], rendered: Rendered) -> None:
        size = len(rendered.body)
        if size > self._capacity // 4:
            return
        self._memo[key] = rendered
        self._used += size
        while self._used > self._capacity:
            _, old = self._memo.popitem(last=False)
            self._used -= len(old.body)


def _render(
    page: ProjectPage, digest: str, fmt: PageFormat, base: str | None, gzip_ok: bool
) -> Rendered:
    links = LinkBuilder(page.name, base)
    body = render_project_json(page, links) if fmt.is_json else render_project_html(page, links)
    gzipped = gzip_ok and len(body) >= GZIP_MIN_BYTES
    if gzipped:
        # mtime=0: identical input gives identical bytes, so the ETag stays truthful.
        body = gzip.compress(body, compresslevel=6, mtime=0)
    return Rendered(body=body, etag=page_etag(digest, fmt, base, gzipped), gzipped=gzipped)
