"""Small in-memory page sources for fast tests of the page pipeline's stages."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from pipgate.errors import UpstreamError
from pipgate.pages.source import FileOffer, Offers, PageView, ProjectList
from pipgate.simple.model import DistFile, ProjectPage


def dist(filename: str, sha256: str | None = None, url: str | None = None) -> DistFile:
    """A file entry; its sha256 defaults to a digest of the filename."""
    sha = sha256 or hashlib.sha256(filename.encode()).hexdigest()
    return DistFile(
        filename=filename,
        url=url or f"https://files.example/{filename}",
        hashes={"sha256": sha},
    )


class StaticSource:
    """A :class:`~pipgate.pages.source.PageSource` with fixed pages, or a fixed error.

    ``calls`` records every project asked for, so tests can show who was consulted.
    """

    def __init__(
        self,
        name: str,
        pages: dict[str, Iterable[DistFile]] | None = None,
        *,
        error: UpstreamError | None = None,
        result: str = "hit",
        names_file: Path | None = None,
    ) -> None:
        self.name = name
        self.pages = {n: tuple(files) for n, files in (pages or {}).items()}
        self.error = error
        self.result = result
        self.names_file = names_file
        self.calls: list[str] = []

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        self.calls.append(name)
        if self.error is not None:
            raise self.error
        files = self.pages.get(name)
        if files is None:
            return PageView(page=None, digest="", result=self.result, age=0.0)
        page = ProjectPage(name=name, files=files)
        digest = hashlib.sha256(page.to_json()).hexdigest()
        return PageView(
            page=page,
            digest=digest,
            result=self.result,
            age=0.0,
            upstream=self.name,
            offers=Offers(page, self.name),
        )

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        if self.error is not None:
            raise self.error
        assert self.names_file is not None
        digest = hashlib.sha256(self.names_file.read_bytes()).hexdigest()
        count = len(self.names_file.read_text().splitlines())
        return ProjectList(self.names_file, digest, count, 0.0, self.result)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        return (await self.project(name)).offer(key, filename)

    async def close(self) -> None:
        pass
