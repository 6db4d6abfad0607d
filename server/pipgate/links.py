"""pipgate's own URL scheme for distribution files, and the rewriting of file links.

A file is served at ``files/<project>/<key>/<filename>`` where ``key`` is the file's
published sha256 (or, when upstream publishes none, a digest of its upstream URL).
Such URLs are stable over time (they end up in lock files), end with the filename
(pip and uv take the filename from the last path segment) and carry no query string
(pip builds the PEP 658 URL by appending ``.metadata``).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

# The filename rule lives with the model (a page never holds another filename);
# the web layer and the importer read it from here, with the rest of the URL scheme.
from pipgate.simple.model import DistFile, is_safe_filename

__all__ = ["LinkBuilder", "file_key", "file_path", "is_file_key", "is_safe_filename"]

_KEY = re.compile(r"^(?:[0-9a-f]{64}|u[0-9a-f]{40})$")


def file_key(dist: DistFile) -> str:
    """The stable URL segment that identifies a file: its sha256, else a URL digest.

    Content-addressed keys keep URLs stable and let a cached blob be served without
    consulting the project page.
    """
    sha = dist.sha256
    if sha and len(sha) == 64:
        return sha
    return "u" + hashlib.sha256(dist.url.encode()).hexdigest()[:40]


def is_file_key(value: str) -> bool:
    """Whether ``value`` has the shape of a :func:`file_key`."""
    return bool(_KEY.match(value))


def file_path(project: str, dist: DistFile) -> str:
    """The path of a file below pipgate's root, without a leading slash."""
    return f"files/{project}/{file_key(dist)}/{quote(dist.filename, safe='')}"


class LinkBuilder:
    """Builds file URLs as seen from a project page ``<root>simple/<project>/``.

    With ``base`` (``public_url``, or the trusted ``X-Forwarded-*`` origin) links are
    absolute; without it they are relative, which works behind any host name or
    path prefix.
    """

    def __init__(self, project: str, base: str | None = None) -> None:
        self.project = project
        self.prefix = base if base is not None else "../../"

    def __call__(self, dist: DistFile) -> str:
        return self.prefix + file_path(self.project, dist)
