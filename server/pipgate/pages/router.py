"""The router: one page source over several upstreams, safe against dependency
confusion.

A project belongs to the first upstream of its route (:mod:`.routing`) that has it.
A later upstream is asked only after a definite "not found" from every earlier one: an
earlier upstream that times out, fails TLS, answers 5xx or is marked down stops the
look-up (its stale page, or its remembered "not found", is used when it has one; else
the error is the answer). That is what keeps an outage of the internal index from
turning into an install of a public package with an internal name. A ``merge`` route
combines its upstreams' files instead (:mod:`.merge`). The project list is the union of
every upstream's list.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from pipgate.errors import UpstreamError
from pipgate.metrics import Metrics
from pipgate.pages import names_file
from pipgate.pages.merge import merge_pages
from pipgate.pages.routing import Route, RoutingTable
from pipgate.pages.source import FileOffer, Offers, PageSource, PageView, ProjectList
from pipgate.simple.model import ProjectPage

log = logging.getLogger("pipgate.router")

#: Worst first: the result a combined view reports.
_RESULT_ORDER = ("stale", "miss", "revalidated", "hit")
#: Merged pages kept in memory, by the digests they were made from.
MERGED_CACHE_SIZE = 256


class Router:
    """The :class:`~pipgate.pages.source.PageSource` over several upstreams' sources."""

    def __init__(
        self,
        sources: Mapping[str, PageSource],
        table: RoutingTable,
        lists_dir: Path,
        metrics: Metrics,
    ) -> None:
        self._sources = dict(sources)
        self._table = table
        self._lists_dir = lists_dir
        self._metrics = metrics
        self._merged: OrderedDict[str, tuple[ProjectPage, Offers]] = OrderedDict()
        self._union_builds: dict[str, asyncio.Task[int]] = {}

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        route = self._table.route_for(name)
        if route.merge:
            return await self._merge(name, route, revalidate)
        return await self._first(name, route, revalidate)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        return (await self.project(name)).offer(key, filename)

    async def close(self) -> None:
        for source in self._sources.values():
            await source.close()
        for task in list(self._union_builds.values()):
            task.cancel()

    # --- one owner ---------------------------------------------------------------------

    async def _first(self, name: str, route: Route, revalidate: bool) -> PageView:
        """The page of the first upstream that has ``name``; never past a failure."""
        absent: list[PageView] = []
        for number, upstream in enumerate(route.upstreams):
            try:
                view = await self._sources[upstream].project(name, revalidate=revalidate)
            except UpstreamError as exc:
                if number + 1 < len(route.upstreams):
                    raise _stops_here(exc, name, upstream) from exc
                raise
            if view.page is not None:
                if any(v.stale for v in absent):
                    # Owned by this upstream on an earlier one's remembered "not found":
                    # clients should check again soon.
                    return replace(view, result="stale")
                return view
            absent.append(view)
        return _not_found(absent)

    # --- merged ------------------------------------------------------------------------

    async def _merge(self, name: str, route: Route, revalidate: bool) -> PageView:
        """The files of every upstream of the route, earliest first; any failure fails
        the page (a partial merge could let a later upstream's file win a filename)."""
        views = await asyncio.gather(
            *(self._sources[u].project(name, revalidate=revalidate) for u in route.upstreams)
        )
        present = [(u, v) for u, v in zip(route.upstreams, views, strict=True) if v.page]
        if not present:
            return _not_found(list(views))
        if len(present) == 1:
            return present[0][1]
        key = hashlib.sha256("|".join(f"{u}:{v.digest}" for u, v in present).encode()).hexdigest()
        memo = self._merged.get(key)
        if memo is None:
            memo = self._build_merged(name, [(u, v.page) for u, v in present if v.page])
            self._merged[key] = memo
            while len(self._merged) > MERGED_CACHE_SIZE:
                self._merged.popitem(last=False)
        else:
            self._merged.move_to_end(key)
        page, offers = memo
        first_seen: dict[str, float] = {}
        for _upstream, view in reversed(present):  # the earlier upstream's time wins
            first_seen.update(view.first_seen or {})
        return PageView(
            page=page,
            digest=key,
            result=_worst(v.result for v in views),
            age=max(v.age for v in views),
            upstream=present[0][0],
            offers=offers,
            first_seen=first_seen,
        )

    def _build_merged(
        self, name: str, pages: Sequence[tuple[str, ProjectPage]]
    ) -> tuple[ProjectPage, Offers]:
        merged = merge_pages(name, pages)
        for conflict in merged.conflicts:
            self._metrics.merge_conflicts.labels(upstream=conflict.dropped_upstream).inc()
            log.warning(
                "merge conflict: %s of %s differs between %s and %s; serving %s's",
                conflict.filename,
                name,
                conflict.kept_upstream,
                conflict.dropped_upstream,
                conflict.kept_upstream,
                extra={
                    "event": "merge_conflict",
                    "project": name,
                    "file": conflict.filename,
                    "upstream": conflict.dropped_upstream,
                },
            )
        return merged.page, Offers(merged.page, pages[0][0], merged.origins)

    # --- the project list --------------------------------------------------------------

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        """The union of every upstream's list (those that cannot be had are left out,
        and the union is then marked stale)."""
        sources = list(self._sources.values())
        if len(sources) == 1:
            return await sources[0].project_list(revalidate=revalidate)
        results = await asyncio.gather(
            *(s.project_list(revalidate=revalidate) for s in sources), return_exceptions=True
        )
        lists: list[ProjectList] = []
        for result in results:
            if isinstance(result, ProjectList):
                lists.append(result)
            elif not isinstance(result, UpstreamError):
                raise result
        if not lists:
            failure = next(r for r in results if isinstance(r, UpstreamError))
            raise failure
        missing = len(lists) < len(sources)
        digest = hashlib.sha256("|".join(p.digest for p in lists).encode()).hexdigest()
        path = self._lists_dir / f"names-{digest[:32]}"
        task = self._union_builds.get(digest)
        if task is None:
            task = asyncio.create_task(asyncio.to_thread(self._union, lists, path))
            self._union_builds[digest] = task
            task.add_done_callback(lambda _t: self._union_builds.pop(digest, None))
        count = await asyncio.shield(task)
        results_seen = [p.result for p in lists] + (["stale"] if missing else [])
        return ProjectList(
            path=path,
            digest=digest,
            count=count,
            age=max(p.age for p in lists),
            result=_worst(results_seen),
        )

    def _union(self, lists: Sequence[ProjectList], path: Path) -> int:
        """Write (or reuse) the merged names file; returns its number of names."""
        if path.is_file():
            with open(path, "rb") as names:
                return sum(1 for _ in names)
        path.parent.mkdir(parents=True, exist_ok=True)
        _digest, count = names_file.merge([p.path for p in lists], path)
        names_file.remove_old(path.parent, path)
        return count


def _stops_here(error: UpstreamError, name: str, upstream: str) -> UpstreamError:
    """The error, with why later upstreams were not asked (for the developer)."""
    stopped = UpstreamError(
        error.reason,
        f"{error.detail} (upstream {upstream} comes first for {name} and did not answer; "
        "later upstreams are not asked, so a public package cannot stand in for it)",
        status=error.status,
    )
    stopped.retry_after = error.retry_after
    return stopped


def _not_found(views: Sequence[PageView]) -> PageView:
    return PageView(
        page=None,
        digest="",
        result=_worst(v.result for v in views),
        age=max((v.age for v in views), default=0.0),
        missing=next((v.missing for v in views if v.missing), None),
    )


def _worst(results: Iterable[str]) -> str:
    seen = set(results)
    return next((r for r in _RESULT_ORDER if r in seen), "miss")
