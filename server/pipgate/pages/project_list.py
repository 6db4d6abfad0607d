"""One upstream's project list: fetched rarely, kept on disk as a sorted names file.

PyPI's list has ~930k projects (~40 MB of HTML), so it is never held in memory: the
upstream body is streamed to a temp file, parsed incrementally, and sorted into a
names file (:mod:`.names_file`) that the router merges with other upstreams' lists and
the web layer renders once per content change. A list older than ``root_ttl`` is
still served while one background refresh runs (stale-while-revalidate); a client's
``no-cache`` waits for the refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import ijson

from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.pages import names_file
from pipgate.pages.source import ProjectList
from pipgate.simple.model import SUPPORTED_MAJOR, ProjectEntry, api_version_tuple
from pipgate.simple.names import is_valid_name
from pipgate.simple.parse import PageParseError, ProjectListHtmlParser
from pipgate.store.catalog import Catalog, ListRecord
from pipgate.upstream.client import UpstreamClient

log = logging.getLogger("pipgate.lists")


class UpstreamList:
    """Keeps one upstream's project list in ``<cache>/lists/<upstream>/``."""

    def __init__(
        self,
        client: UpstreamClient,
        catalog: Catalog,
        reporter: FailureReporter,
        directory: Path,
        *,
        ttl: float,
        max_stale: float,
    ) -> None:
        self._client = client
        self._catalog = catalog
        self._reporter = reporter
        self.dir = directory
        self._ttl = ttl
        self._max_stale = max(max_stale, ttl)
        self._refresh_task: asyncio.Task[ListRecord] | None = None

    @property
    def source(self) -> str:
        return self._client.name

    async def get(self, *, revalidate: bool = False) -> ProjectList:
        """The current list; raises :class:`UpstreamError` if none can be had."""
        record = await self._catalog.get_list(self.source)
        usable = record is not None and self._path(record.digest).is_file()
        if record is not None and usable:
            age = time.time() - record.fetched_at
            if not revalidate and age < self._ttl:
                return self._view(record, "hit")
            if not revalidate:
                # Serve what we have; refresh in the background.
                self._start_refresh()
                return self._view(record, "stale")
        try:
            fresh = await asyncio.shield(self._start_refresh())
        except UpstreamError:
            if record is not None and usable and time.time() - record.fetched_at <= self._max_stale:
                return self._view(record, "stale")
            raise
        result = "revalidated" if record is not None and record.digest == fresh.digest else "miss"
        return self._view(fresh, result)

    def _start_refresh(self) -> asyncio.Task[ListRecord]:
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(
                self._refresh(), name=f"list-refresh:{self.source}"
            )
            self._refresh_task.add_done_callback(_log_task_error)
        return self._refresh_task

    async def close(self) -> None:
        """Cancel a running refresh (shutdown)."""
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await self._refresh_task

    def _view(self, record: ListRecord, result: str) -> ProjectList:
        return ProjectList(
            path=self._path(record.digest),
            digest=record.digest,
            count=record.count,
            age=max(0.0, time.time() - record.fetched_at),
            result=result,
        )

    def _path(self, digest: str) -> Path:
        return self.dir / f"names-{digest[:32]}"

    async def _refresh(self) -> ListRecord:
        old = await self._catalog.get_list(self.source)
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
                self._reporter.report(
                    exc,
                    upstream=self.source,
                    proxy=self._client.proxy_label(),
                    file="/simple/ (project list)",
                )
                raise
            now = time.time()
            if fetched.status == 304 and old is not None and self._path(old.digest).is_file():
                record = ListRecord(
                    fetched_at=now,
                    digest=old.digest,
                    count=old.count,
                    etag=old.etag,
                    last_modified=old.last_modified,
                )
            elif fetched.status == 200:
                is_json = "json" in fetched.content_type.split(";", 1)[0].lower()
                digest, count = await asyncio.to_thread(self._sort, download, is_json)
                record = ListRecord(
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
            await self._catalog.put_list(self.source, record)
            await asyncio.to_thread(names_file.remove_old, self.dir, self._path(record.digest))
            log.info("project list of %s refreshed: %d projects", self.source, record.count)
            return record
        finally:
            download.unlink(missing_ok=True)

    def _sort(self, source: Path, is_json: bool) -> tuple[str, int]:
        """Parse the upstream list into a sorted names file (blocking)."""
        names = self.dir / f"sorting-{uuid.uuid4().hex}.tmp"
        try:
            digest, count = names_file.write_sorted(_parse_list(source, is_json), names)
            names.replace(self._path(digest))
            return digest, count
        finally:
            names.unlink(missing_ok=True)


def _parse_list(source: Path, is_json: bool) -> Iterator[ProjectEntry]:
    """The projects of a list on disk, parsed incrementally (HTML or JSON): memory stays
    flat whatever the list's size (which ``limits.max_list_size`` bounds)."""
    try:
        if is_json:
            yield from _parse_json_list(source)
            return
        parser = ProjectListHtmlParser()
        with open(source, encoding="utf-8", errors="replace") as body:
            while chunk := body.read(1 << 20):
                yield from parser.feed(chunk)
        yield from parser.close()
    except (PageParseError, ijson.JSONError, ValueError) as exc:
        raise UpstreamError(Reason.BAD_PAGE, f"unreadable project list: {exc}") from exc


def _parse_json_list(source: Path) -> Iterator[ProjectEntry]:
    """A PEP 691 root list, event by event (``ijson``): only ``projects[].name`` and
    ``meta.api-version`` matter; names that are not valid projects are dropped."""
    projects = False
    with open(source, "rb") as body:
        for prefix, event, value in ijson.parse(body):
            if prefix == "meta.api-version" and event == "string":
                try:
                    major, _minor = api_version_tuple(value)
                except ValueError:
                    raise PageParseError(f"bad api-version {value[:20]!r}") from None
                if major > SUPPORTED_MAJOR:  # PEP 629: fail on an unknown major version
                    raise PageParseError(f"unsupported api-version {value[:20]!r}")
            elif prefix == "projects" and event == "start_array":
                projects = True
            elif prefix == "projects.item.name" and event == "string":
                if is_valid_name(value):
                    yield ProjectEntry(value)
            elif prefix == "" and event not in ("start_map", "end_map", "map_key"):
                raise PageParseError("a project list must be a JSON object")
    if not projects:
        raise PageParseError("projects is not a list")


def _log_task_error(task: asyncio.Task[ListRecord]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("background project list refresh failed: %s", task.exception())
