"""The internal model -> client-facing simple-repository pages (bytes).

Pure: no I/O. File URLs come from the caller's ``url_for`` (the rewritten pipgate URL,
without fragment), so the cached model stays independent of who asked. Every value
from upstream is escaped here; nothing is ever spliced into HTML unescaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from html import escape
from typing import Any
from urllib.parse import quote

from packaging.utils import parse_sdist_filename, parse_wheel_filename

from pipgate.simple.model import (
    HTML_MAX_VERSION,
    KNOWN_HTML_ATTRS,
    KNOWN_JSON_FILE_KEYS,
    KNOWN_JSON_PAGE_KEYS,
    CoreMetadata,
    DistFile,
    ProjectEntry,
    ProjectPage,
    api_version_tuple,
)
from pipgate.simple.names import normalize

__all__ = [
    "json_api_version",
    "render_project_html",
    "render_project_json",
    "render_project_list_html",
    "render_project_list_json",
]

UrlFor = Callable[[DistFile], str]

#: Fragment hash preference: PEP 503 recommends sha256; the rest are what pip accepts
#: (``models/link.py``) plus blake2b, which uv knows.
_HASH_PREFERENCE = ("sha256", "sha512", "sha384", "sha224", "sha1", "md5", "blake2b")
_HEX = re.compile(r"[0-9a-fA-F]+\Z")
_DATA_ATTR = re.compile(r"data-[a-z0-9_.:-]+\Z")
_PLAIN_HREF = re.compile(r"[a-z0-9-]+\Z")
_STATUS_META = (("status", "pypi:project-status"), ("reason", "pypi:project-status-reason"))
#: Root-list entries per yielded chunk: big enough that 930k entries cost ~450 chunks.
_BATCH = 2048


def _attr(name: str, value: str) -> str:
    return f' {name}="{escape(value, quote=True)}"'


def _html_version(api_version: str) -> str:
    """PEP 629 marker for HTML: upstream's version, capped at 1.4 (PEP 833 froze HTML)."""
    try:
        version = api_version_tuple(api_version)
    except ValueError:
        version = (1, 0)
    version = min(version, api_version_tuple(HTML_MAX_VERSION))
    return f"{version[0]}.{version[1]}"


def _preferred_hash(hashes: dict[str, str]) -> tuple[str, str] | None:
    """The (lowercase name, hex) to put in a fragment; only well-formed hex qualifies."""
    lowered: dict[str, str] = {}
    for key, value in hashes.items():
        lowered.setdefault(key.lower(), value)
    for hash_name in _HASH_PREFERENCE:
        digest = lowered.get(hash_name)
        if digest and _HEX.match(digest):
            return hash_name, digest
    return None


def _yanked(dist: DistFile) -> bool | str:
    """PEP 592 value normalised: ``False``, ``True`` or a non-empty reason."""
    if isinstance(dist.yanked, str):
        return dist.yanked or True
    return bool(dist.yanked)


def _html_core_metadata(value: CoreMetadata) -> str | None:
    # PEP 658: "<hashname>=<hex>" of the .metadata file, or "true" when no hash is known.
    if not value:
        return None
    if isinstance(value, dict) and (preferred := _preferred_hash(value)):
        return f"{preferred[0]}={preferred[1]}"
    return "true"


def _anchor(dist: DistFile, url: str) -> str:
    preferred = _preferred_hash(dist.hashes)
    # PEP 503: the hash travels as the URL fragment "#<hashname>=<hex>".
    href = f"{url}#{preferred[0]}={preferred[1]}" if preferred else url
    parts = ["<a", _attr("href", href)]
    if dist.requires_python is not None:
        # PEP 503: "<" and ">" must be HTML-encoded; escape(quote=True) does that.
        parts.append(_attr("data-requires-python", dist.requires_python))
    yanked = _yanked(dist)
    if yanked is not False:
        # Never a bare attribute: pip reads bare data-yanked as None, i.e. not yanked.
        parts.append(_attr("data-yanked", "" if yanked is True else str(yanked)))
    if (metadata := _html_core_metadata(dist.core_metadata)) is not None:
        # PEP 714: data-core-metadata, plus the old name with the same value for old pip.
        parts.append(_attr("data-core-metadata", metadata))
        parts.append(_attr("data-dist-info-metadata", metadata))
    if dist.gpg_sig is not None:
        parts.append(_attr("data-gpg-sig", "true" if dist.gpg_sig else "false"))
    if dist.provenance is not None:
        parts.append(_attr("data-provenance", dist.provenance))  # PEP 740: unchanged URL
    if dist.size is not None:
        parts.append(_attr("data-size", str(dist.size)))  # uv reads it (non-standard)
    if dist.upload_time is not None:
        parts.append(_attr("data-upload-time", dist.upload_time))
    for key, value in dist.html_attrs.items():
        if key not in KNOWN_HTML_ATTRS and _DATA_ATTR.match(key):
            parts.append(_attr(key, value))
    parts.append(f">{escape(dist.filename)}</a>")
    return "".join(parts)


def render_project_html(page: ProjectPage, url_for: UrlFor) -> bytes:
    """PEP 503 HTML5 project page (API version capped at 1.4, PEP 833)."""
    name = escape(page.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta charset="utf-8">',
        f'    <meta name="pypi:repository-version" content="{_html_version(page.api_version)}">',
    ]
    status = page.project_status or {}
    # PEP 792 HTML form of project-status.
    for key, meta_name in _STATUS_META:
        if isinstance(status.get(key), str):
            lines.append(f'    <meta name="{meta_name}"{_attr("content", status[key])}>')
    lines += [
        f"    <title>Links for {name}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {name}</h1>",
    ]
    # PEP 792: offered_files() is empty for a quarantined project.
    lines += [f"    {_anchor(dist, url_for(dist))}<br/>" for dist in page.offered_files()]
    lines += ["  </body>", "</html>", ""]
    # "replace": a lone surrogate from a JSON upstream must not crash the response.
    return "\n".join(lines).encode("utf-8", errors="replace")


def _derived_versions(files: Iterable[DistFile]) -> tuple[str, ...]:
    """PEP 700 ``versions`` from filenames (for HTML upstreams); unparseable names skipped."""
    versions = set()
    for dist in files:
        try:
            if dist.filename.endswith(".whl"):
                versions.add(parse_wheel_filename(dist.filename)[1])
            else:
                versions.add(parse_sdist_filename(dist.filename)[1])
        except ValueError:  # InvalidWheelFilename, InvalidSdistFilename, InvalidVersion
            continue
    return tuple(str(v) for v in sorted(versions))


def json_api_version(page: ProjectPage) -> str:
    """``meta.api-version`` for the JSON rendering of ``page``.

    Upstream's version is kept unless a field it promises is missing: PEP 700 (1.1)
    makes ``size`` mandatory on every file, so a page with a size-less file says 1.0.
    (``versions``, also mandatory since 1.1, is derived from filenames when missing.)
    """
    try:
        version = api_version_tuple(page.api_version)
    except ValueError:
        return "1.0"
    if version >= (1, 1) and any(dist.size is None for dist in page.offered_files()):
        return "1.0"
    return f"{version[0]}.{version[1]}"


def _json_file(dist: DistFile, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"filename": dist.filename, "url": url, "hashes": dist.hashes}
    if dist.requires_python is not None:
        out["requires-python"] = dist.requires_python  # PEP 691: no escaping in JSON
    if dist.core_metadata is not None:
        # PEP 714: "core-metadata" is the name; PyPI also sends data-dist-info-metadata
        # (safe for every pip); "dist-info-metadata" would crash pip 22.3-23.1.
        out["core-metadata"] = dist.core_metadata
        out["data-dist-info-metadata"] = dist.core_metadata
    if dist.gpg_sig is not None:
        out["gpg-sig"] = dist.gpg_sig
    out["yanked"] = _yanked(dist)
    if dist.size is not None:
        out["size"] = dist.size
    if dist.upload_time is not None:
        out["upload-time"] = dist.upload_time
    if dist.provenance is not None:
        out["provenance"] = dist.provenance
    for key, value in dist.extra.items():
        if key not in KNOWN_JSON_FILE_KEYS:
            out[key] = value
    return out


def render_project_json(page: ProjectPage, url_for: UrlFor) -> bytes:
    """PEP 691 JSON project page (deterministic key order, ASCII-only output)."""
    version = json_api_version(page)
    files = page.offered_files()
    meta = {"api-version": version}
    meta.update((k, v) for k, v in page.meta_extra.items() if k != "api-version")
    doc: dict[str, Any] = {
        "meta": meta,
        "name": page.name,
        "files": [_json_file(dist, url_for(dist)) for dist in files],
    }
    versions = page.versions
    if versions is None and api_version_tuple(version) >= (1, 1):
        versions = _derived_versions(files)  # PEP 700: mandatory from 1.1
    if versions is not None:
        doc["versions"] = list(versions)
    if page.project_status is not None:
        doc["project-status"] = page.project_status  # PEP 792: top level, like PyPI
    for key, value in page.extra.items():
        if key not in KNOWN_JSON_PAGE_KEYS:
            doc[key] = value
    # ensure_ascii (the default) also keeps lone surrogates from a bad upstream encodable;
    # allow_nan=False: NaN/Infinity are not JSON (the parser never produces them).
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("ascii")


def _batches(entries: Iterable[ProjectEntry]) -> Iterator[list[ProjectEntry]]:
    batch: list[ProjectEntry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _root_href(name: str) -> str:
    href = normalize(name)
    return href if _PLAIN_HREF.match(href) else quote(href, safe="")


def render_project_list_html(
    entries: Iterable[ProjectEntry], api_version: str = "1.0"
) -> Iterator[bytes]:
    """PEP 503 root page as chunks, so 930k projects stream in constant memory."""
    yield (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta charset="utf-8">\n'
        f'    <meta name="pypi:repository-version" content="{_html_version(api_version)}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
    ).encode()
    for batch in _batches(entries):
        # PEP 503: text is the project name, href the (relative) normalised project URL.
        yield "".join(
            f'    <a href="{_root_href(e.name)}/">{escape(e.name)}</a><br/>\n' for e in batch
        ).encode("utf-8", errors="replace")
    yield b"  </body>\n</html>\n"


def render_project_list_json(
    entries: Iterable[ProjectEntry], api_version: str = "1.0"
) -> Iterator[bytes]:
    """PEP 691 root list as chunks; names are display names, like PyPI's."""
    yield ('{"meta":' + json.dumps({"api-version": api_version}) + ',"projects":[').encode()
    separator = ""
    for batch in _batches(entries):
        body = json.dumps([{"name": e.name} for e in batch], separators=(",", ":"))
        yield (separator + body[1:-1]).encode("ascii")
        separator = ","
    yield b"]}"
