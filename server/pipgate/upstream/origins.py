"""Where an upstream's links and redirects may lead (``file_hosts``).

A hostile or broken index page must not steer pipgate to another host: file links to
an origin outside the upstream's own and its ``file_hosts`` are dropped from the page,
and every redirect hop pipgate follows is checked against the same rule (and may never
go from https to http).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from urllib.parse import urlsplit

from pipgate.config import origin_of
from pipgate.errors import Reason, UpstreamError
from pipgate.redact import redact_url
from pipgate.simple.model import ProjectPage


class OriginRule:
    """A set of origins (``https://host[:port]``, or ``https://*.suffix``)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._exact: set[str] = set()
        self._wildcards: list[tuple[str, str, str]] = []  # (scheme, .suffix, :port)
        for origin in origins:
            scheme, _, netloc = origin.partition("://")
            if netloc.startswith("*."):
                host, _, port = netloc[1:].partition(":")
                self._wildcards.append((scheme, host, port))
            else:
                self._exact.add(origin)

    def allows(self, url: str) -> bool:
        """Whether ``url`` (absolute) is on one of the origins."""
        origin = origin_of(url)
        if origin in self._exact:
            return True
        scheme, _, netloc = origin.partition("://")
        host, _, port = netloc.partition(":")
        return any(
            scheme == s and host.endswith(suffix) and port == p for s, suffix, p in self._wildcards
        )

    def check_redirect(self, source: str, target: str) -> None:
        """Raise ``redirect`` unless a hop from ``source`` to ``target`` is allowed."""
        scheme = urlsplit(target).scheme
        if scheme not in ("http", "https"):
            raise UpstreamError(Reason.REDIRECT, f"redirect to a {scheme or 'relative'} URL")
        if urlsplit(source).scheme == "https" and scheme == "http":
            raise UpstreamError(
                Reason.REDIRECT, f"redirect from https to http ({redact_url(target)}) refused"
            )
        if not self.allows(target):
            raise UpstreamError(
                Reason.REDIRECT,
                f"redirect to {origin_of(target)}, which is not in this upstream's file_hosts",
            )


def keep_allowed_files(page: ProjectPage, rule: OriginRule) -> tuple[ProjectPage, int]:
    """``page`` without the files whose URL leaves ``rule``'s origins (a ``<base href>``
    elsewhere included: links are already resolved against it), and how many went."""
    kept = tuple(dist for dist in page.files if rule.allows(dist.url))
    dropped = len(page.files) - len(kept)
    return (replace(page, files=kept) if dropped else page), dropped
