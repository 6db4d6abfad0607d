"""The one interface of the page pipeline, and the values that flow through it.

A :class:`PageSource` answers three questions: the page of a project, the list of all
projects, and whether a project offers a given file (and from which upstream). One
upstream's pages, the router over several upstreams, and every filter around them
(deny-list today; policy, offline and metadata injection next) implement it, so a
feature is a wrapper, never a flag inside the service below it. The file service asks
:meth:`PageSource.find_file` for every request, so what a stage hides from the page is
hidden from the file URLs too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipgate.links import file_key
from pipgate.simple.model import DistFile, ProjectPage


class NotOffered(Exception):
    """The page does not offer this file; the message says why (shown to the client)."""


@dataclass(frozen=True, slots=True)
class FileOffer:
    """A file a project's page offers, and the upstream it is fetched from."""

    project: str
    dist: DistFile
    upstream: str


class Offers:
    """A page's offered files by (URL key, filename), built on first use.

    Kept with the parsed page (one per content digest), so a file request costs one
    dictionary look-up, not a scan of a page that may list thousands of files.
    """

    def __init__(
        self, page: ProjectPage, upstream: str, origins: Mapping[str, str] | None = None
    ) -> None:
        self._page = page
        self._upstream = upstream
        #: filename -> upstream, for merged pages whose files come from several.
        self._origins = origins or {}
        self._by_key: dict[tuple[str, str], FileOffer] | None = None

    def upstream_of(self, filename: str) -> str:
        """The upstream a file of this page comes from."""
        return self._origins.get(filename, self._upstream)

    def for_page(self, page: ProjectPage) -> Offers:
        """The offers of ``page`` (a filtered copy of this one's), same upstreams."""
        return Offers(page, self._upstream, self._origins)

    def get(self, key: str, filename: str) -> FileOffer | None:
        """The offer of the file with this URL key and filename, if the page has it."""
        if self._by_key is None:
            self._by_key = {
                (file_key(dist), dist.filename): FileOffer(
                    self._page.name, dist, self._origins.get(dist.filename, self._upstream)
                )
                for dist in self._page.offered_files()
            }
        return self._by_key.get((key, filename))


@dataclass(frozen=True)
class PageView:
    """A project page as pipgate will serve it."""

    #: ``None`` when no upstream has the project.
    page: ProjectPage | None
    #: Changes exactly when what is served changes (ETags derive from it).
    digest: str
    #: ``hit``, ``miss``, ``revalidated`` or ``stale`` (the cache metric's result).
    result: str
    #: Seconds since upstream last confirmed the content.
    age: float
    #: The upstream that owns the project (the first of a merged page), if any.
    upstream: str | None = None
    offers: Offers | None = field(default=None, repr=False, compare=False)
    #: filename -> when pipgate first saw the file (for files without ``upload-time``).
    first_seen: dict[str, float] | None = field(default=None, repr=False, compare=False)
    #: Seconds until what is served changes by itself (a file leaves its cooldown).
    expires_in: float | None = None
    #: Why there is no page, when it is not simply "upstream has no such project".
    missing: str | None = None

    @property
    def stale(self) -> bool:
        return self.result == "stale"

    def offer(self, key: str, filename: str) -> FileOffer | None:
        """The offered file with this URL key and filename, if any."""
        return self.offers.get(key, filename) if self.offers is not None else None


@dataclass(frozen=True)
class ProjectList:
    """A project list as a file of sorted ``normalised<TAB>display name`` lines."""

    path: Path
    #: sha256 of the file: changes exactly when the list does.
    digest: str
    count: int
    age: float
    #: ``hit``, ``miss``, ``revalidated`` or ``stale``.
    result: str


class PageSource(Protocol):
    """Where pages come from, and what of them is visible."""

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        """The page of normalised project ``name``.

        Raises :class:`~pipgate.errors.UpstreamError` when it cannot be had (or may
        not be served); a project that does not exist is a view whose page is None.
        """
        ...

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        """Every project (raises :class:`~pipgate.errors.UpstreamError` if none can
        be had)."""
        ...

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        """The file of project ``name`` with this URL key and filename, if its page
        offers it (a stage may raise :class:`NotOffered` to say why not)."""
        ...

    async def close(self) -> None:
        """Stop background work (shutdown)."""
        ...
