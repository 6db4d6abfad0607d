"""The one internal model of simple-repository pages, shaped like PEP 691 JSON.

Upstream pages arrive as HTML or JSON; both are parsed into these dataclasses once
(``parse.py``) and every response is rendered from them (``render.py``). File URLs in
the model are the *upstream's* absolute URLs; rewriting to pipgate happens at render
time through a callback, so the cached model never depends on who asked.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

#: Highest API version pipgate understands. PEP 629: a client (and so a proxy reading an
#: upstream) fails on an unknown major version and tolerates a higher minor one.
SUPPORTED_MAJOR = 1
#: PEP 833 froze HTML at 1.4: later versions only add JSON fields.
HTML_MAX_VERSION = "1.4"

_API_VERSION = re.compile(r"\s*([0-9]{1,9})\.([0-9]{1,9})\s*\Z")


def api_version_tuple(value: str) -> tuple[int, int]:
    """``"1.4"`` -> ``(1, 4)`` for numeric comparison (``"1.10"`` > ``"1.9"``).

    PEP 629 versions are ``Major.Minor``; anything else raises ``ValueError``.
    """
    match = _API_VERSION.match(value)
    if match is None:
        raise ValueError(f"not a Major.Minor api version: {value[:40]!r}")
    return int(match[1]), int(match[2])


#: The ``data-*`` anchor attributes the model knows; any other one is passed through
#: in :attr:`DistFile.html_attrs`.
KNOWN_HTML_ATTRS = frozenset(
    {
        "data-requires-python",
        "data-yanked",
        "data-core-metadata",
        "data-dist-info-metadata",
        "data-gpg-sig",
        "data-provenance",
        "data-size",
        "data-upload-time",
    }
)

#: The PEP 691 keys of a file entry the model knows (``dist-info-metadata`` included: it
#: is read as a fallback but never written, PEP 714); any other key is passed through
#: in :attr:`DistFile.extra`.
KNOWN_JSON_FILE_KEYS = frozenset(
    {
        "filename",
        "url",
        "hashes",
        "requires-python",
        "core-metadata",
        "data-dist-info-metadata",
        "dist-info-metadata",
        "gpg-sig",
        "yanked",
        "size",
        "upload-time",
        "provenance",
    }
)
#: The PEP 691 top-level keys of a project page the model knows.
KNOWN_JSON_PAGE_KEYS = frozenset({"meta", "name", "files", "versions", "project-status"})

#: ``core_metadata`` values: absent, ``True`` (no hash known), or ``{"sha256": hex}``.
CoreMetadata = bool | dict[str, str] | None

# Bounds on what a page may carry. A hostile upstream's absurd values become "not
# given" here, once, whichever source built the page (an upstream, the cache, a merge,
# an import), so nothing downstream and no client ever sees them.
#: Largest ``size``: clients read it as a 64-bit integer (uv's u64).
MAX_SIZE = (1 << 63) - 1
#: Longest text field (requires-python, a yank reason, an unknown ``data-*`` value):
#: real ones are under 100 characters.
MAX_TEXT = 1024
#: Longest URL kept (file links, provenance): no server takes longer request lines.
MAX_URL = 8192
#: Deepest nesting of an unknown JSON value passed through to clients (uv's JSON
#: parser gives up past 128 levels, and the whole page with it).
MAX_DEPTH = 32
#: Unknown ``data-*`` attributes kept per link.
MAX_HTML_ATTRS = 32
#: Longest distribution filename (PyPI's longest are ~200 characters).
MAX_FILENAME = 255
#: PEP 700 ``upload-time``: an ISO 8601 date-time with its UTC offset (PyPI sends
#: ``2024-01-02T03:04:05.123456Z``).
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_DATA_ATTR = re.compile(r"data-[a-z0-9_.:-]+\Z")


#: PEP 503: the fragment's hash name is one of hashlib's guaranteed algorithms; its
#: value is the hex digest, of the algorithm's length (shake_* have none and are out).
_HEX_LENGTHS = {
    name: hashlib.new(name).digest_size * 2
    for name in hashlib.algorithms_guaranteed
    if not name.startswith("shake_")
}
_HEX = re.compile(r"[0-9a-fA-F]+\Z")


def is_known_hash(name: str) -> bool:
    """Whether ``name`` is a hash algorithm pipgate can check."""
    return name.lower() in _HEX_LENGTHS


def is_valid_hash(name: str, digest: str) -> bool:
    """Whether ``digest`` is hex of the right length for hash algorithm ``name``.

    A hash of any other shape is no hash at all: pipgate would otherwise key, or
    "verify", files by a value that can never match.
    """
    length = _HEX_LENGTHS.get(name.lower())
    return length is not None and len(digest) == length and _HEX.match(digest) is not None


def is_safe_filename(value: str) -> bool:
    """A distribution filename fit for a path segment and a log line: no separators,
    no NUL or other unprintable characters, no dot-files."""
    return (
        0 < len(value) <= MAX_FILENAME
        and not value.startswith(".")
        and not any(c in value for c in "/\\\x00")
        and value.isprintable()
    )


def is_timestamp(value: str) -> bool:
    """Whether ``value`` is a PEP 700 ``upload-time`` (a real date and time, with offset).

    Anything else is dropped rather than passed on: uv refuses a whole page over one
    unreadable ``upload-time``, and the release cooldown must not read it as "old".
    """
    if not _TIMESTAMP.match(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:  # month 13, February 30, hour 24...
        return False
    return True


def _is_web_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return len(value) <= MAX_URL and parts.scheme in ("http", "https") and bool(parts.netloc)


def _depth_within(value: object, limit: int) -> bool:
    """Whether ``value`` nests no deeper than ``limit`` (never recurses past it)."""
    if isinstance(value, dict):
        return limit > 0 and all(_depth_within(v, limit - 1) for v in value.values())
    if isinstance(value, list | tuple):
        return limit > 0 and all(_depth_within(v, limit - 1) for v in value)
    return True


def shallow(mapping: dict[str, Any], limit: int = MAX_DEPTH) -> dict[str, Any]:
    """``mapping`` without the keys whose value nests deeper than ``limit``."""
    if all(_depth_within(v, limit - 1) for v in mapping.values()):
        return mapping
    return {k: v for k, v in mapping.items() if _depth_within(v, limit - 1)}


@dataclass(frozen=True, slots=True)
class DistFile:
    """One distribution file of a project page (PEP 691 "files" entry)."""

    filename: str
    #: Absolute upstream URL, without fragment.
    url: str
    #: Hash name -> hex digest, exactly as upstream gave them (PEP 691: always present).
    hashes: dict[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    #: PEP 658/714. ``None`` means upstream did not say.
    core_metadata: CoreMetadata = None
    gpg_sig: bool | None = None
    #: PEP 592: ``False``, ``True`` or the (non-empty) reason string.
    yanked: bool | str = False
    #: PEP 700 (JSON ``size`` / uv's HTML ``data-size``).
    size: int | None = None
    #: PEP 700 ISO 8601 UTC string, passed through unchanged.
    upload_time: str | None = None
    #: PEP 740: absolute https URL, passed through unchanged; ``None`` = absent or null.
    provenance: str | None = None
    #: Unknown JSON keys of newer API versions, passed through unchanged.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Unknown ``data-*`` attributes of HTML anchors, passed through into HTML only.
    html_attrs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Informational fields out of bounds are dropped (a yank stays a yank).
        def drop(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if any(is_known_hash(k) and not is_valid_hash(k, v) for k, v in self.hashes.items()):
            # A malformed hash of an algorithm pipgate checks is no hash (names it does
            # not know pass through for clients that do).
            hashes = {
                k: v for k, v in self.hashes.items() if not is_known_hash(k) or is_valid_hash(k, v)
            }
            drop("hashes", hashes)
        size = self.size
        if size is not None and not (type(size) is int and 0 <= size <= MAX_SIZE):
            drop("size", None)
        if self.upload_time is not None and not is_timestamp(self.upload_time):
            drop("upload_time", None)
        if self.provenance is not None and not _is_web_url(self.provenance):
            drop("provenance", None)  # PEP 740: an absolute URL
        if isinstance(self.yanked, str) and len(self.yanked) > MAX_TEXT:
            drop("yanked", True)
        if self.requires_python is not None and len(self.requires_python) > MAX_TEXT:
            drop("requires_python", None)  # as clients do with one they cannot read
        if self.html_attrs:
            kept = [
                (k, v)
                for k, v in self.html_attrs.items()
                if _DATA_ATTR.match(k) and len(v) <= MAX_TEXT
            ][:MAX_HTML_ATTRS]
            if len(kept) != len(self.html_attrs):
                drop("html_attrs", dict(kept))
        if self.extra:
            drop("extra", shallow(self.extra))

    @property
    def sha256(self) -> str | None:
        """The published sha256 in lowercase hex, if upstream gave one."""
        value = self.hashes.get("sha256")
        return value.lower() if value else None

    @property
    def metadata_sha256(self) -> str | None:
        """The published sha256 of the PEP 658 ``.metadata`` file, if any."""
        if isinstance(self.core_metadata, dict):
            value = self.core_metadata.get("sha256")
            return value.lower() if value else None
        return None

    @property
    def has_metadata(self) -> bool:
        """Whether upstream serves a PEP 658 metadata file for this distribution."""
        return bool(self.core_metadata)


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """A project detail page (PEP 691 project JSON)."""

    #: PEP 503 normalised name.
    name: str
    files: tuple[DistFile, ...] = ()
    #: Upstream's ``meta.api-version`` (or ``pypi:repository-version``), "1.0" if absent.
    api_version: str = "1.0"
    #: PEP 700 ``versions``; ``None`` when upstream did not send it (HTML, API 1.0).
    versions: tuple[str, ...] | None = None
    #: PEP 792 ``project-status`` object (``{"status": ..., "reason": ...}``) or ``None``.
    project_status: dict[str, Any] | None = None
    #: Unknown ``meta`` keys (e.g. PyPI's ``_last-serial``).
    meta_extra: dict[str, Any] = field(default_factory=dict)
    #: Unknown top-level keys (e.g. ``alternate-locations``).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One file per filename (the first wins, as with merged upstreams): offers,
        # first-seen times and the policy are all keyed by it, and a second entry with
        # other hashes would let a client pick either. Filenames that no file URL can
        # serve are left out too.
        seen: set[str] = set()
        files = []
        for dist in self.files:
            if dist.filename not in seen and is_safe_filename(dist.filename):
                seen.add(dist.filename)
                files.append(dist)
        if len(files) != len(self.files) or not isinstance(self.files, tuple):
            object.__setattr__(self, "files", tuple(files))
        object.__setattr__(self, "meta_extra", shallow(self.meta_extra))
        object.__setattr__(self, "extra", shallow(self.extra))
        if self.project_status is not None:
            object.__setattr__(self, "project_status", shallow(self.project_status))

    @property
    def status(self) -> str:
        """PEP 792 status, ``active`` when upstream says nothing."""
        if self.project_status and isinstance(self.project_status.get("status"), str):
            return str(self.project_status["status"])
        return "active"

    @property
    def quarantined(self) -> bool:
        """PEP 792: a quarantined project MUST NOT offer any file for download."""
        return self.status == "quarantined"

    def offered_files(self) -> tuple[DistFile, ...]:
        """The files a client may see and download (none while quarantined)."""
        return () if self.quarantined else self.files

    def to_json(self) -> bytes:
        """Serialise for the page cache (lossless; not the client-facing JSON)."""
        return json.dumps(_page_to_dict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProjectPage:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(data)
        files = tuple(DistFile(**{**f, "hashes": dict(f["hashes"])}) for f in raw.pop("files"))
        versions = raw.pop("versions")
        return cls(
            files=files,
            versions=tuple(versions) if versions is not None else None,
            **raw,
        )


@dataclass(frozen=True, slots=True)
class ProjectEntry:
    """One entry of the root project list."""

    #: The name as upstream displays it (anchor text / JSON ``name``).
    name: str


def _page_to_dict(page: ProjectPage) -> dict[str, Any]:
    return {
        "name": page.name,
        "files": [
            {
                "filename": f.filename,
                "url": f.url,
                "hashes": f.hashes,
                "requires_python": f.requires_python,
                "core_metadata": f.core_metadata,
                "gpg_sig": f.gpg_sig,
                "yanked": f.yanked,
                "size": f.size,
                "upload_time": f.upload_time,
                "provenance": f.provenance,
                "extra": f.extra,
                "html_attrs": f.html_attrs,
            }
            for f in page.files
        ],
        "api_version": page.api_version,
        "versions": list(page.versions) if page.versions is not None else None,
        "project_status": page.project_status,
        "meta_extra": page.meta_extra,
        "extra": page.extra,
    }
