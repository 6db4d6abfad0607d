"""The ``/simple/`` project list: fetched rarely, rendered to disk, served streamed.

PyPI's list has ~930k projects (~40 MB of HTML), so it is never held in memory: the
upstream body is streamed to a temp file, parsed incrementally into a names file, and
rendered once per content change into four files (HTML, JSON, each also gzipped) that
requests are served from with sendfile. A list older than ``root_ttl`` is still served
while one background refresh runs (stale-while-revalidate); a client's ``no-cache``
waits for the refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipgate.config import Config
from pipgate.errors import Reason, UpstreamError
from pipgate.metrics import Metrics
from pipgate.simple.model import ProjectEntry
from pipgate.simple.parse import (
    PageParseError,
    ProjectListHtmlParser,
    parse_project_list_json,
)
from pipgate.simple.render import render_project_list_html, render_project_list_json
from pipgate.store.index import Index, RootRecord
from pipgate.upstream.client import UpstreamClient

log = logging.getLogger("pipgate.root")

#: The rendered variants: (file suffix, gzipped).
VARIANTS = ("html", "html.gz", "json", "json.gz")


@dataclass(frozen=True)
class RootView:
    """The rendered root list to serve."""

    digest: str
    age: float
    result: str
    files: dict[str, Path]


class RootListService:
    """Keeps a rendered copy of upstream's project list in ``<cache>/pages``."""

    def __init__(
        self, config: Config, index: Index, client: UpstreamClient, metrics: Metrics
    ) -> None:
        self._config = config
        self._index = index
        self._client = client
        self._metrics = metrics
        self.dir = config.cache_dir / "pages"
        self._refresh_task: asyncio.Task[RootRecord] | None = None

    async def get(self, *, revalidate: bool = False) -> RootView:
        """The current list; raises :class:`UpstreamError` if none can be had."""
        record = await self._index.get_root()
        usable = record is not None and self._files_exist(record)
        if record is not None and usable:
            age = time.time() - record.fetched_at
            if not revalidate and age < self._config.root_ttl:
                self._metrics.cache("index", "hit")
                return self._view(record, "hit")
            if not revalidate:
                # Serve what we have; refresh in the background.
                self._start_refresh()
                self._metrics.cache("index", "stale")
                return self._view(record, "stale")
        try:
            fresh = await asyncio.shield(self._start_refresh())
        except UpstreamError:
            if record is not None and usable:
                age = time.time() - record.fetched_at
                if age <= max(self._config.max_stale, self._config.root_ttl):
                    self._metrics.cache("index", "stale")
                    return self._view(record, "stale")
            raise
        result = "revalidated" if record is not None and record.digest == fresh.digest else "miss"
        self._metrics.cache("index", result)
        return self._view(fresh, result)

    def _start_refresh(self) -> asyncio.Task[RootRecord]:
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(self._refresh(), name="root-refresh")
            self._refresh_task.add_done_callback(_log_task_error)
        return self._refresh_task

    async def close(self) -> None:
        """Cancel a running refresh (shutdown)."""
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await self._refresh_task

    def _view(self, record: RootRecord, result: str) -> RootView:
        return RootView(
            digest=record.digest,
            age=max(0.0, time.time() - record.fetched_at),
            result=result,
            files={v: self._path(record.digest, v) for v in VARIANTS},
        )

    def _path(self, digest: str, variant: str) -> Path:
        return self.dir / f"root-{digest[:32]}.{variant}"

    def _files_exist(self, record: RootRecord) -> bool:
        return all(self._path(record.digest, v).is_file() for v in VARIANTS)

    async def _refresh(self) -> RootRecord:
        old = await self._index.get_root()
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        download = self.dir / f"upstream-{uuid.uuid4().hex}.tmp"
        try:
            try:
                fetched = await self._client.fetch_to_file(
                    self._client.index_url,
                    download,
                    etag=old.etag if old else None,
                    last_modified=old.last_modified if old else None,
                )
            except UpstreamError as exc:
                self._client.report_failure(exc, file="/simple/ (project list)")
                raise
            now = time.time()
            if fetched.status == 304 and old is not None and self._files_exist(old):
                record = RootRecord(
                    fetched_at=now,
                    digest=old.digest,
                    count=old.count,
                    etag=old.etag,
                    last_modified=old.last_modified,
                )
            elif fetched.status == 200:
                is_json = "json" in fetched.content_type.split(";", 1)[0].lower()
                digest, count = await asyncio.to_thread(self._render_all, download, is_json)
                record = RootRecord(
                    fetched_at=now,
                    digest=digest,
                    count=count,
                    etag=fetched.etag,
                    last_modified=fetched.last_modified,
                )
            else:
                raise UpstreamError(
                    Reason.BAD_PAGE, f"project list answered {fetched.status}", fetched.status
                )
            await self._index.put_root(record)
            await asyncio.to_thread(self._remove_old, record.digest)
            log.info("project list refreshed: %d projects", record.count)
            return record
        finally:
            download.unlink(missing_ok=True)

    def _render_all(self, source: Path, is_json: bool) -> tuple[str, int]:
        """Parse the upstream list into a names file, then write every variant."""
        names = self.dir / f"names-{uuid.uuid4().hex}.tmp"
        try:
            digest = hashlib.sha256()
            count = 0
            with open(names, "w", encoding="utf-8") as out:
                for entry in _parse_list(source, is_json):
                    line = entry.name + "\n"
                    out.write(line)
                    digest.update(line.encode())
                    count += 1
            hexdigest = digest.hexdigest()
            if all(self._path(hexdigest, v).is_file() for v in VARIANTS):
                return hexdigest, count
            renderers = {
                "html": render_project_list_html,
                "json": render_project_list_json,
            }
            for kind, render in renderers.items():
                plain = self._path(hexdigest, kind)
                packed = self._path(hexdigest, kind + ".gz")
                tmp_plain = plain.with_suffix(".part")
                tmp_packed = packed.with_suffix(".part.gz")
                with open(tmp_plain, "wb") as p, gzip.open(tmp_packed, "wb", 6) as g:
                    for chunk in render(_read_names(names)):
                        p.write(chunk)
                        g.write(chunk)
                tmp_plain.replace(plain)
                tmp_packed.replace(packed)
            return hexdigest, count
        finally:
            names.unlink(missing_ok=True)

    def _remove_old(self, keep: str) -> None:
        for path in self.dir.glob("root-*"):
            if not path.name.startswith(f"root-{keep[:32]}."):
                path.unlink(missing_ok=True)


def _parse_list(source: Path, is_json: bool) -> Iterator[ProjectEntry]:
    try:
        if is_json:
            # JSON cannot be parsed incrementally with the stdlib; this runs only at
            # refresh time, and upstreams are asked for HTML first.
            yield from parse_project_list_json(source.read_bytes())
            return
        parser = ProjectListHtmlParser()
        with open(source, encoding="utf-8", errors="replace") as body:
            while chunk := body.read(1 << 20):
                yield from parser.feed(chunk)
        yield from parser.close()
    except (PageParseError, json.JSONDecodeError, ValueError) as exc:
        raise UpstreamError(Reason.BAD_PAGE, f"unreadable project list: {exc}") from exc


def _read_names(path: Path) -> Iterator[ProjectEntry]:
    with open(path, encoding="utf-8") as names:
        for line in names:
            yield ProjectEntry(name=line.rstrip("\n"))


def _log_task_error(task: asyncio.Task[RootRecord]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("background project list refresh failed: %s", task.exception())
