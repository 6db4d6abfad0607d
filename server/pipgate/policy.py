"""Which projects pipgate refuses to serve (``[policy] deny``).

An ops team blocks a malicious or banned project for everybody in one place. A denied
project's pages and files are answered with 403 and reason ``policy``, counted and
listed like any other failure, so a dashboard shows who still asks for it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pipgate.errors import Reason, UpstreamError
from pipgate.simple.names import normalize


class Policy:
    """The deny-list, matched against PEP 503 normalised names."""

    def __init__(self, deny: tuple[str, ...]) -> None:
        self._patterns = tuple(normalize(p) if not _is_pattern(p) else p for p in deny)

    def check(self, project: str) -> None:
        """Raise a ``policy`` error when ``project`` (normalised) is denied."""
        for pattern in self._patterns:
            if fnmatchcase(project, pattern):
                raise UpstreamError(
                    Reason.POLICY,
                    f"project {project} is blocked by this server's policy ({pattern})",
                    status=403,
                )


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")
