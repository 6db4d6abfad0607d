"""Combine one project's pages from several upstreams (``merge = true`` routes).

Pure. Files are taken in upstream order; a filename already offered by an earlier
upstream is never replaced, and when a later upstream offers the same filename with
other contents (another sha256) that file is dropped and reported as a conflict:
one name must mean one file, whichever upstream a client's lock file came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipgate.simple.model import DistFile, ProjectPage, api_version_tuple

#: PEP 792 statuses, most restrictive first: the merged page takes the strongest.
_STATUS_ORDER = ("quarantined", "deprecated", "archived")


@dataclass(frozen=True)
class Conflict:
    """A later upstream's file dropped because an earlier one has that filename."""

    filename: str
    kept_upstream: str
    dropped_upstream: str


@dataclass(frozen=True)
class Merged:
    page: ProjectPage
    #: filename -> the upstream it comes from.
    origins: dict[str, str]
    conflicts: tuple[Conflict, ...]


def merge_pages(name: str, pages: Sequence[tuple[str, ProjectPage]]) -> Merged:
    """Merge ``(upstream, page)`` pairs, earliest upstream first."""
    files: list[DistFile] = []
    origins: dict[str, str] = {}
    by_name: dict[str, DistFile] = {}
    conflicts: list[Conflict] = []
    for upstream, page in pages:
        for dist in page.files:
            first = by_name.get(dist.filename)
            if first is None:
                by_name[dist.filename] = dist
                origins[dist.filename] = upstream
                files.append(dist)
            elif _differs(first, dist):
                conflicts.append(Conflict(dist.filename, origins[dist.filename], upstream))
    versions: tuple[str, ...] | None = None
    if all(page.versions is not None for _, page in pages):
        seen: dict[str, None] = {}
        for _, page in pages:
            seen.update(dict.fromkeys(page.versions or ()))
        versions = tuple(seen)
    api_version = min((page.api_version for _, page in pages), key=api_version_tuple, default="1.0")
    meta_extra: dict[str, object] = {}
    extra: dict[str, object] = {}
    for _, page in reversed(pages):  # earlier upstreams win on unknown keys too
        meta_extra.update(page.meta_extra)
        extra.update(page.extra)
    merged = ProjectPage(
        name=name,
        files=tuple(files),
        api_version=api_version,
        versions=versions,
        project_status=_strongest_status(page for _, page in pages),
        meta_extra=meta_extra,
        extra=extra,
    )
    return Merged(page=merged, origins=origins, conflicts=tuple(conflicts))


def _differs(a: DistFile, b: DistFile) -> bool:
    """Whether two entries of one filename are different files (by a shared hash)."""
    for algorithm, digest in a.hashes.items():
        other = b.hashes.get(algorithm)
        if other is not None:
            return other.lower() != digest.lower()
    # No hash to compare: the same filename is trusted to be the same file only if it
    # is the same URL.
    return a.url != b.url


def _strongest_status(pages: Iterable[ProjectPage]) -> dict[str, object] | None:
    statuses = [p.project_status for p in pages if p.project_status]
    for wanted in _STATUS_ORDER:
        for status in statuses:
            if status.get("status") == wanted:
                return dict(status)
    return dict(statuses[0]) if statuses else None
