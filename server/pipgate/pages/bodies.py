"""Response bodies of pages and project lists, with their ETags, made once per content.

A page body depends only on (content digest, format, link base, encoding), so the
rendered bytes are cached under that key and the strong ETag is derived from it:
``If-None-Match`` can be answered without rendering, and every variant (HTML, JSON,
gzip) has its own strong ETag, as caches require (a weak one would stop uv from
revalidating). A project list (~930k names on PyPI) is rendered to files on disk
instead, once per digest, and served from there with sendfile.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pipgate.links import LinkBuilder
from pipgate.pages import names_file
from pipgate.pages.source import ProjectList
from pipgate.simple.model import ProjectPage
from pipgate.simple.negotiate import PageFormat
from pipgate.simple.render import (
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
)

#: Bodies smaller than this are not worth compressing.
GZIP_MIN_BYTES = 1024
#: Pages of at most this many files are rendered on the event loop: well under a
#: millisecond, less than the hop to a worker thread and back.
INLINE_FILES = 64
#: Memory bound of the rendered-page cache (a page asked for every second is answered
#: from :mod:`pipgate.web.hot_pages` anyway; this keeps the bodies of the next tier).
CACHE_BYTES = 16 << 20


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
        if len(page.files) <= INLINE_FILES:
            rendered = _render(page, digest, fmt, base, gzip_ok)
        else:
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


#: The rendered variants of a project list: (file suffix, gzipped).
LIST_VARIANTS = ("html", "html.gz", "json", "json.gz")
#: Rendered lists of an earlier digest are kept this long (another worker may still
#: be sending one).
OLD_LIST_GRACE = 3600.0


def list_etag(digest: str, fmt: PageFormat, gzipped: bool) -> str:
    """The strong ETag of one variant of a project list."""
    return f'"{digest[:32]}-{fmt.variant}{"-gz" if gzipped else ""}"'


class ListRenderer:
    """Renders project lists into ``<cache>/pages/`` once per digest (any worker)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._builds: dict[str, asyncio.Task[None]] = {}

    def path(self, digest: str, variant: str) -> Path:
        """Where one variant of the list with ``digest`` is (or will be)."""
        return self.dir / f"root-{digest[:32]}.{variant}"

    async def files(self, listing: ProjectList) -> dict[str, Path]:
        """The variant files of ``listing``, rendered if no worker has done it yet."""
        paths = {v: self.path(listing.digest, v) for v in LIST_VARIANTS}
        if not await asyncio.to_thread(lambda: all(p.is_file() for p in paths.values())):
            task = self._builds.get(listing.digest)
            if task is None:
                task = asyncio.create_task(asyncio.to_thread(self._render, listing))
                self._builds[listing.digest] = task
                task.add_done_callback(lambda _t: self._builds.pop(listing.digest, None))
            await asyncio.shield(task)
        return paths

    def _render(self, listing: ProjectList) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        renderers = {"html": render_project_list_html, "json": render_project_list_json}
        for kind, render in renderers.items():
            plain = self.path(listing.digest, kind)
            packed = self.path(listing.digest, kind + ".gz")
            token = uuid.uuid4().hex
            tmp_plain = plain.with_name(f"{plain.name}.{token}.part")
            tmp_packed = packed.with_name(f"{packed.name}.{token}.part")
            try:
                with (
                    open(tmp_plain, "wb") as p,
                    open(tmp_packed, "wb") as raw,
                    # mtime=0: every worker renders identical bytes for one ETag.
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as g,
                ):
                    for chunk in render(names_file.read(listing.path)):
                        p.write(chunk)
                        g.write(chunk)
                tmp_plain.replace(plain)
                tmp_packed.replace(packed)
            finally:
                tmp_plain.unlink(missing_ok=True)
                tmp_packed.unlink(missing_ok=True)
        keep = f"root-{listing.digest[:32]}."
        for old in self.dir.glob("root-*"):
            if not old.name.startswith(keep) and time.time() - _mtime(old) > OLD_LIST_GRACE:
                old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
