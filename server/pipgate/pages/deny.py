"""The deny-list (``[policy] deny``), as a filter around a page source.

An ops team blocks a malicious or banned project for everybody in one place. A denied
project's page, and every file URL naming it, is answered with 403 and reason
``policy``, counted and listed like any other failure, so a dashboard shows who still
asks for it. The source below never hears of the request.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pipgate.errors import Reason, UpstreamError
from pipgate.failures import FailureReporter
from pipgate.pages.source import FileOffer, PageSource, PageView, ProjectList

#: The ``upstream`` label of failures no upstream was asked about.
NO_UPSTREAM = "-"


class DenyList:
    """A :class:`~pipgate.pages.source.PageSource` that refuses denied projects."""

    def __init__(
        self, inner: PageSource, patterns: tuple[str, ...], reporter: FailureReporter
    ) -> None:
        self._inner = inner
        #: PEP 503 normalised names and globs (the config normalises them).
        self._patterns = patterns
        self._reporter = reporter

    def _check(self, name: str, file: str | None = None) -> None:
        for pattern in self._patterns:
            if fnmatchcase(name, pattern):
                error = UpstreamError(
                    Reason.POLICY,
                    f"project {name} is blocked by this server's policy ({pattern})",
                    status=403,
                )
                self._reporter.report(error, upstream=NO_UPSTREAM, project=name, file=file)
                raise error

    async def project(self, name: str, *, revalidate: bool = False) -> PageView:
        self._check(name)
        return await self._inner.project(name, revalidate=revalidate)

    async def project_list(self, *, revalidate: bool = False) -> ProjectList:
        return await self._inner.project_list(revalidate=revalidate)

    async def find_file(self, name: str, key: str, filename: str) -> FileOffer | None:
        self._check(name, filename)
        return await self._inner.find_file(name, key, filename)

    async def close(self) -> None:
        await self._inner.close()
