"""Upstream simple-repository pages (bytes) -> the internal model.

Pure: no I/O. Both serialisations (PEP 503 HTML, PEP 691 JSON) land in the same
:mod:`pipgate.simple.model` dataclasses. The only exception any input can raise is
:class:`PageParseError`; a single malformed file entry is skipped, not fatal, because
one bad link upstream must not take a whole project offline.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

from pipgate.simple.model import (
    KNOWN_HTML_ATTRS,
    KNOWN_JSON_FILE_KEYS,
    KNOWN_JSON_PAGE_KEYS,
    MAX_URL,
    SUPPORTED_MAJOR,
    CoreMetadata,
    DistFile,
    ProjectEntry,
    ProjectPage,
    api_version_tuple,
    is_known_hash,
    is_safe_filename,
    is_valid_hash,
)
from pipgate.simple.names import MAX_NAME_LENGTH, is_valid_name, normalize

__all__ = [
    "PageParseError",
    "ProjectListHtmlParser",
    "parse_project_html",
    "parse_project_json",
    "parse_project_list_json",
]


class PageParseError(ValueError):
    """An upstream page that cannot be understood (wrong shape or unknown API major)."""


# ---------------------------------------------------------------------------------------
# Shared helpers

#: Causes passed to ``on_skip`` for a file entry that is left out: a link that is not
#: http(s), and a second file of the same name.
SKIP_SCHEME = "scheme"
SKIP_DUPLICATE = "duplicate"
SkipCallback = Callable[[str], None]


_DIGITS = re.compile(r"[0-9]{1,19}\Z")
#: ``data-*`` attribute names that may be passed through into our HTML verbatim.
_DATA_ATTR = re.compile(r"data-[a-z0-9_.:-]+\Z")


def _api_version(value: object) -> str:
    """PEP 629 version string; missing means 1.0; an unknown major version is fatal."""
    if value is None:
        return "1.0"
    if not isinstance(value, str):
        raise PageParseError("api-version is not a string")
    try:
        major, minor = api_version_tuple(value)
    except ValueError:
        raise PageParseError(f"bad api-version {value[:20]!r}") from None
    # PEP 629: a client MUST fail on a major version it does not know.
    if major > SUPPORTED_MAJOR:
        raise PageParseError(f"unsupported api-version {major}.{minor}")
    return f"{major}.{minor}"


def _resolve(base: str, href: str) -> str | None:
    """Absolute http(s) URL of ``href`` without fragment; ``None`` if unusable.

    Other schemes (``file:``, ``javascript:``...) are dropped so an upstream page can
    never make pipgate fetch something that is not a web resource. The one exception:
    a page read from a ``file:`` index (a ``pipgate export`` directory) links files
    next to it, also ``file:`` (the local index keeps them inside its directory).
    """
    try:
        url = urljoin(base, href.strip()).partition("#")[0]
        scheme = urlsplit(url).scheme
        base_scheme = urlsplit(base).scheme
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None
    if scheme in ("http", "https") or (scheme == "file" and base_scheme == "file"):
        return url
    return None


def _project_status(value: object) -> dict[str, Any] | None:
    """PEP 792 ``project-status`` object, as given.

    PEP 792's prose says ``state`` while PyPI, uv and the examples say ``status``; a
    ``state``-only object is copied to ``status`` so a quarantine is never missed.
    """
    if isinstance(value, str):
        return {"status": value}
    if not isinstance(value, dict):
        return None
    status = dict(value)
    if "status" not in status and isinstance(status.get("state"), str):
        status["status"] = status["state"]
    return status


def _reject_constant(value: str) -> NoReturn:
    # NaN/Infinity are not JSON; json.dumps would re-emit them and break clients.
    raise ValueError(f"invalid JSON constant {value}")


def _load_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PageParseError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise PageParseError("JSON page is not an object")  # PEP 691: always an object
    return data


def _decode_html(body: bytes) -> str:
    # PEP 503 pages are UTF-8 in practice; replacement keeps a stray byte from being
    # fatal (it can only damage the one link it sits in).
    return body.decode("utf-8", errors="replace").removeprefix("\ufeff")


# ---------------------------------------------------------------------------------------
# Project page, JSON (PEP 691)

_CORE_METADATA_KEYS = ("core-metadata", "data-dist-info-metadata", "dist-info-metadata")


class _BadEntry(Exception):
    """A file entry with a wrong-typed field that decides what gets installed."""


def parse_project_json(
    body: bytes, page_url: str, name: str, *, on_skip: SkipCallback | None = None
) -> ProjectPage:
    """Parse a PEP 691 project page; ``name`` is the normalised name pipgate asked for.

    ``on_skip`` hears of each file entry left out because its URL is not http(s), or
    because an earlier entry has its filename.
    """
    data = _load_json_object(body)
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise PageParseError("meta is not an object")
    meta_extra = dict(meta)
    api_version = _api_version(meta_extra.pop("api-version", None))
    # PEP 691: the page names its project. Another project's page (a misdirected
    # redirect, a confused or hostile index) must not be served under this name.
    page_name = data.get("name")
    if page_name is not None and (not isinstance(page_name, str) or normalize(page_name) != name):
        shown = page_name[:80] if isinstance(page_name, str) else type(page_name).__name__
        raise PageParseError(f"the page is for project {shown!r}, not {name!r}")
    # PEP 792: top-level "project-status" (PyPI, uv); the living spec's example puts it
    # under "meta", so accept that too (it is re-emitted at the top level).
    meta_status = meta_extra.pop("project-status", None)
    project_status = _project_status(data.get("project-status"))
    if project_status is None:
        project_status = _project_status(meta_status)

    raw_files = data.get("files")
    if not isinstance(raw_files, list):
        raise PageParseError("files is not a list")
    files: list[DistFile] = []
    for entry in raw_files:
        try:
            dist = _json_file(entry, page_url, on_skip)
        except _BadEntry:
            continue
        if dist is not None:
            files.append(dist)

    raw_versions = data.get("versions")
    versions = (
        tuple(v for v in raw_versions if isinstance(v, str))
        if isinstance(raw_versions, list)
        else None
    )
    page = ProjectPage(
        name=name,
        files=tuple(files),
        api_version=api_version,
        versions=versions,
        project_status=project_status,
        meta_extra=meta_extra,
        extra={k: v for k, v in data.items() if k not in KNOWN_JSON_PAGE_KEYS},
    )
    _report_duplicates(files, page, on_skip)
    return page


def _report_duplicates(
    files: list[DistFile], page: ProjectPage, on_skip: SkipCallback | None
) -> None:
    """The model keeps the first file of each name; tell ``on_skip`` of the others."""
    if on_skip is not None:
        for _ in range(len(files) - len(page.files)):
            on_skip(SKIP_DUPLICATE)


def _json_file(entry: object, page_url: str, on_skip: SkipCallback | None) -> DistFile | None:
    """One ``files`` entry.

    Fields that decide what gets installed (filename, url, hashes, requires-python,
    yanked) must have the right type or the entry is skipped; informational fields
    (core-metadata, gpg-sig, size, upload-time, provenance) of the wrong type are dropped.
    """
    if not isinstance(entry, dict):
        return None
    filename = entry.get("filename")
    href = entry.get("url")
    if not isinstance(filename, str) or not isinstance(href, str) or len(href) > MAX_URL:
        return None
    url = _resolve(page_url, href)  # PEP 691: relative URLs resolve like HTML's
    if url is None:
        if on_skip is not None:
            on_skip(SKIP_SCHEME)
        return None
    if not is_safe_filename(filename):
        return None
    return DistFile(
        filename=filename,
        url=url,
        hashes=_json_hashes(entry.get("hashes")),
        requires_python=_strict_str(entry.get("requires-python")),
        core_metadata=_json_core_metadata(entry),
        gpg_sig=_opt(entry.get("gpg-sig"), bool),
        yanked=_json_yanked(entry.get("yanked")),
        size=_json_size(entry.get("size")),
        upload_time=_opt(entry.get("upload-time"), str),
        provenance=_opt(entry.get("provenance"), str),
        extra={k: v for k, v in entry.items() if k not in KNOWN_JSON_FILE_KEYS},
    )


def _json_hashes(value: object) -> dict[str, str]:
    if value is None:  # PEP 691 requires "hashes", but pip copes without; so do we
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _BadEntry
    # Byte-identical names and digests; a known algorithm's malformed digest is dropped,
    # names pipgate does not know are passed through for clients that do.
    return {k: v for k, v in value.items() if not is_known_hash(k) or is_valid_hash(k, v)}


def _strict_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _BadEntry


def _json_yanked(value: object) -> bool | str:
    # PEP 592/691: a bool or a non-empty reason; an empty reason still means yanked.
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value or True
    raise _BadEntry


def _json_core_metadata(entry: dict[str, Any]) -> CoreMetadata:
    # PEP 714: read "core-metadata" first, then the older names.
    for key in _CORE_METADATA_KEYS:
        value = entry.get(key)
        if value is None:
            continue
        if isinstance(value, bool):
            return value
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            hashes = {
                k: v
                for k, v in value.items()
                if not is_known_hash(k) or is_valid_hash(k, v)
            }
            # A metadata file whose published hashes are all malformed: it exists.
            return hashes or (True if value else {})
        # Wrong type: try the next name; metadata is only an optimisation for clients.
    return None


def _json_size(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


_T = TypeVar("_T")


def _opt(value: object, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None


# ---------------------------------------------------------------------------------------
# Project page, HTML (PEP 503 + 592/629/658/714/740/792, uv's data-size/upload-time)


# A linear scanner, not ``html.parser``: its recovery from a tag or comment left open
# rescans the rest of the page for every "<" after it, so 400 KB of ``<a href="x"
# data-y="`` kept a worker thread busy for two minutes. The regexes below are
# ``html.parser``'s own (Python 3.11), so well-formed pages parse exactly as before; what
# is left open at the end of the page (a tag, a comment) runs to the end, as in HTML5.
_TAG_NAME = re.compile(r"([a-zA-Z][^\t\n\r\f />\x00]*)(?:\s|/(?!>))*")
_ATTRIBUTE = re.compile(
    r"((?<=['\"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*"
    r"('[^']*'|\"[^\"]*\"|(?!['\"])[^>\s]*))?(?:\s|/(?!>))*"
)
_START_TAG = re.compile(
    r"""
  <[a-zA-Z][^\t\n\r\f />\x00]*       # tag name
  (?:[\s/]*                          # optional whitespace before attribute name
    (?:(?<=['"\s/])[^\s/>][^\s/=>]*  # attribute name
      (?:\s*=+\s*                    # value indicator
        (?:'[^']*'                   # LITA-enclosed value
          |"[^"]*"                   # LIT-enclosed value
          |(?!['"])[^>\s]*           # bare value
         )
        \s*                          # possibly followed by a space
       )?(?:\s|/(?!>))*
     )*
   )?
  \s*                                # trailing whitespace
""",
    re.VERBOSE,
)
_END_TAG = re.compile(r"</\s*([a-zA-Z][-.a-zA-Z0-9:_]*)\s*>")
_COMMENT_END = re.compile(r"--\s*>")
_SECTION_NAME = re.compile(r"<!\[\s*([a-zA-Z]*)")
_SECTION_END = re.compile(r"]\s*]\s*>")
_MS_SECTION_END = re.compile(r"]\s*>")
#: Elements whose content is raw text (no tags, no entities): what html.parser skips.
_RAW_TEXT_END = {
    "script": re.compile(r"</\s*script\s*>", re.IGNORECASE),
    "style": re.compile(r"</\s*style\s*>", re.IGNORECASE),
}


class _ProjectHtmlScanner:
    """What a project page says: ``<base href>``, ``<meta>`` tags and the anchors."""

    def __init__(self) -> None:
        self.saw_markup = False
        self.base_href: str | None = None
        self.meta: dict[str, str] = {}
        self.anchors: list[tuple[dict[str, str | None], list[str]]] = []
        self._text: list[str] | None = None

    def scan(self, text: str) -> None:
        pos, end = 0, len(text)
        while pos < end:
            lt = text.find("<", pos)
            if lt < 0:
                self._data(text[pos:])
                break
            if lt > pos:
                self._data(text[pos:lt])
            pos = self._markup(text, lt)

    def _markup(self, text: str, i: int) -> int:
        """Handle the construct at ``text[i] == "<"``; return where scanning goes on."""
        end = len(text)
        following = text[i + 1 : i + 2]
        if text.startswith("<!--", i):
            close = _COMMENT_END.search(text, i + 4)
            return close.end() if close else end
        if following == "!":
            if text.startswith("<![", i):
                section = _SECTION_NAME.match(text, i)
                name = section[1].lower() if section else ""
                closer = _MS_SECTION_END if name in ("if", "else", "endif") else _SECTION_END
                close = closer.search(text, i + 3)
                if close is not None:
                    return close.end()
            elif text[i + 2 : i + 9].lower() == "doctype":
                self.saw_markup = True
            gt = text.find(">", i + 2)  # a declaration, or a bogus comment
            return gt + 1 if gt >= 0 else end
        if following == "?":
            gt = text.find(">", i + 2)
            return gt + 1 if gt >= 0 else end
        if following == "/":
            return self._end_tag(text, i)
        if following.isascii() and following.isalpha():
            return self._start_tag(text, i)
        self._data("<")
        return i + 1

    def _start_tag(self, text: str, i: int) -> int:
        j = _START_TAG.match(text, i).end()  # type: ignore[union-attr]  # "<x" always matches
        if text.startswith(">", j):
            endpos = j + 1
        elif text.startswith("/>", j):
            endpos = j + 2
        elif j >= len(text):
            return j  # the page ends inside the tag: there is no tag
        else:
            endpos = j  # html.parser's "bogus input": the tag ends here (and is text)
        name_match = _TAG_NAME.match(text, i + 1)
        assert name_match is not None
        tag = name_match[1].lower()
        attrs: list[tuple[str, str | None]] = []
        k = name_match.end()
        while k < endpos:
            attr = _ATTRIBUTE.match(text, k)
            if attr is None:
                break
            attr_name, rest, value = attr.group(1, 2, 3)
            if not rest:
                value = None
            elif value[:1] == "'" == value[-1:] or value[:1] == '"' == value[-1:]:
                value = value[1:-1]
            if value:
                value = html.unescape(value)
            attrs.append((attr_name.lower(), value))
            k = attr.end()
        closing = text[k:endpos].strip()
        if closing not in (">", "/>"):
            self._data(text[i:endpos])  # html.parser reads such a "tag" as text
            return endpos
        self._tag(tag, attrs)
        if closing == "/>":
            if tag == "a":
                self._text = None
            return endpos
        raw_end = _RAW_TEXT_END.get(tag)
        if raw_end is not None:  # script, style: raw text up to their end tag
            close = raw_end.search(text, endpos)
            return close.end() if close else len(text)
        return endpos

    def _end_tag(self, text: str, i: int) -> int:
        gt = text.find(">", i + 1)
        if gt < 0:
            return len(text)  # the page ends inside the tag
        match = _END_TAG.match(text, i)
        if match is not None:
            name = match[1]
        else:
            name_match = _TAG_NAME.match(text, i + 2)
            if name_match is None:
                return gt + 1  # "</>", or a bogus comment up to the next ">"
            name = name_match[1]
            gt = text.find(">", name_match.end())
            if gt < 0:
                gt = len(text) - 1
        self.saw_markup = True
        if name.lower() == "a":
            self._text = None
        return gt + 1

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.saw_markup = True
        attributes: dict[str, str | None] = {}
        for key, value in attrs:
            attributes.setdefault(key, value)  # HTML5: the first occurrence wins
        if tag == "a":
            self._text = []
            self.anchors.append((attributes, self._text))
        elif tag == "base":
            href = attributes.get("href")
            if self.base_href is None and href:  # browsers and pip use the first one
                self.base_href = href
        elif tag == "meta":
            name, content = attributes.get("name"), attributes.get("content")
            if name and content is not None:
                self.meta.setdefault(name.strip().lower(), content)

    def _data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(html.unescape(data))


def parse_project_html(
    body: bytes, page_url: str, name: str, *, on_skip: SkipCallback | None = None
) -> ProjectPage:
    """Parse a PEP 503 HTML project page; ``name`` is the normalised name requested.

    ``on_skip`` hears of each link left out because its URL is not http(s), or because
    an earlier link has its filename. Time is linear in the page's size.
    """
    scanner = _ProjectHtmlScanner()
    scanner.scan(_decode_html(body))
    if not scanner.saw_markup:
        raise PageParseError("not an HTML page")

    api_version = _api_version(scanner.meta.get("pypi:repository-version"))
    base = page_url
    if scanner.base_href:  # pip honours the first <base href>, so do we
        with contextlib.suppress(ValueError):
            base = urljoin(page_url, scanner.base_href.strip())
    files = [
        dist
        for attrs, text in scanner.anchors
        if (dist := _html_file(attrs, "".join(text), base, on_skip)) is not None
    ]
    # PEP 792 HTML: pypi:project-status / pypi:project-status-reason meta tags.
    project_status: dict[str, Any] = {}
    if (status := scanner.meta.get("pypi:project-status")) is not None:
        project_status["status"] = status
    if (reason := scanner.meta.get("pypi:project-status-reason")) is not None:
        project_status["reason"] = reason
    page = ProjectPage(
        name=name,
        files=tuple(files),
        api_version=api_version,
        project_status=project_status or None,
    )
    _report_duplicates(files, page, on_skip)
    return page


def _html_file(
    attrs: dict[str, str | None], text: str, base: str, on_skip: SkipCallback | None
) -> DistFile | None:
    href = attrs.get("href")
    if not href or not href.strip() or len(href) > MAX_URL:
        return None
    url = _resolve(base, href)
    if url is None:
        if on_skip is not None:
            on_skip(SKIP_SCHEME)
        return None
    # PEP 503: the filename is the URL's last path segment (pip and uv read it there).
    filename = unquote(urlsplit(url).path.rpartition("/")[2]) or text.strip()
    if not is_safe_filename(filename):
        return None

    yanked: bool | str = False
    if "data-yanked" in attrs:
        # PEP 592: present without a value (or empty) means yanked with no reason.
        yanked = attrs["data-yanked"] or True
    core_metadata = _html_core_metadata(attrs.get("data-core-metadata"))
    if core_metadata is None:  # PEP 714: clients MAY fall back to the old name
        core_metadata = _html_core_metadata(attrs.get("data-dist-info-metadata"))
    size = attrs.get("data-size")
    return DistFile(
        filename=filename,
        url=url,
        hashes=_fragment_hashes(href.strip().partition("#")[2]),
        requires_python=attrs.get("data-requires-python"),
        core_metadata=core_metadata,
        gpg_sig=_html_bool(attrs.get("data-gpg-sig")),
        yanked=yanked,
        size=int(size) if size and _DIGITS.match(size.strip()) else None,
        upload_time=attrs.get("data-upload-time") or None,
        provenance=attrs.get("data-provenance") or None,
        html_attrs={
            k: v or ""
            for k, v in attrs.items()
            if k not in KNOWN_HTML_ATTRS and _DATA_ATTR.match(k)
        },
    )


def _fragment_hashes(fragment: str) -> dict[str, str]:
    """``sha256=<hex>`` (PEP 503) -> ``{"sha256": hex}``; ``egg=`` and the like are ignored."""
    hashes: dict[str, str] = {}
    for part in fragment.split("&"):
        hash_name, eq, digest = part.partition("=")
        hash_name = hash_name.lower()  # PEP 503: hash names are lowercase
        if eq and is_valid_hash(hash_name, digest):
            hashes.setdefault(hash_name, digest)
    return hashes


def _html_core_metadata(value: str | None) -> CoreMetadata:
    # PEP 658/714: "true" or "<hashname>=<hex>" (the hash of the .metadata file).
    if value is None:
        return None
    value = value.strip()
    if value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    hashes = _fragment_hashes(value)
    if not hashes and "=" in value:
        return True  # advertised, but with no usable hash
    return hashes or None


def _html_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    return True if lowered == "true" else False if lowered == "false" else None


# ---------------------------------------------------------------------------------------
# Root project list


def parse_project_list_json(body: bytes) -> list[ProjectEntry]:
    """Parse a PEP 691 root list; entries whose name is not a valid project are dropped."""
    data = _load_json_object(body)
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise PageParseError("meta is not an object")
    _api_version(meta.get("api-version"))
    projects = data.get("projects")
    if not isinstance(projects, list):
        raise PageParseError("projects is not a list")
    return [
        ProjectEntry(p["name"])
        for p in projects
        if isinstance(p, dict) and isinstance(p.get("name"), str) and is_valid_name(p["name"])
    ]


#: One token of a root page. The first alternative is the whole common PyPI line
#: (``<a href="...">name</a>``) in one match, which makes this scanner about 4x faster
#: than ``html.parser`` on PyPI's 930k anchors; the rest cover any other HTML. A
#: ``(?P<open_...>\Z)`` group marks a construct cut off by the end of the chunk.
_ROOT_TOKEN = re.compile(
    r"""
      (?P<anchor><a(?:\s(?:[^<>"']|"[^"]*"|'[^']*')*)?(?<!/)>(?P<anchor_text>[^<]*)</a\s*>)
    | (?P<text>[^<]+)
    | (?P<raw><(?P<raw_name>script|style)\b.*?(?:</(?P=raw_name)\s*>|(?P<open_raw>\Z)))
    | (?P<comment><!--.*?(?:-->|(?P<open_comment>\Z)))
    | (?P<decl><[!?][^>]*(?:>|(?P<open_decl>\Z)))
    | (?P<tag><(?P<slash>/)?(?P<name>[a-z][^\s/>]*)
        (?:[^>"']|"[^"]*(?:"|\Z)|'[^']*(?:'|\Z))*(?:>|(?P<open_tag>\Z)))
    | (?P<lt><)
    """,
    re.DOTALL | re.IGNORECASE | re.VERBOSE,
)
#: Alternative -> the group that is set when the chunk ended inside it.
_OPEN_GROUPS = {
    "tag": "open_tag",
    "raw": "open_raw",
    "comment": "open_comment",
    "decl": "open_decl",
}


class _TagKind(HTMLParser):
    """Whether html.parser reads one start tag as self-closing (``<a href=x/>`` is not:
    the slash belongs to the unquoted value; ``<a href="x" />`` is)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.empty = False

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.empty = True


def _self_closing(tag: str) -> bool:
    """Whether start tag ``tag`` closes itself (rare in a root page: asked only off the
    fast path, so html.parser's own rule decides, not an imitation of it)."""
    if not tag.endswith("/>"):
        return False
    kind = _TagKind()
    kind.feed(tag)
    return kind.empty


class ProjectListHtmlParser:
    """Incremental PEP 503 root-page parser: constant memory for PyPI's 40 MB page.

    Feed decoded text chunks; each call returns the entries its chunk completed. Never
    raises: anything that is not an anchor with a valid project name is skipped.
    """

    #: A construct still unfinished after this many characters (an unclosed comment,
    #: say) is taken as ending at the chunk's end, so memory stays bounded.
    _MAX_PENDING = 1 << 16
    #: Longest anchor text worth keeping: anything longer is not a valid name.
    _MAX_TEXT = MAX_NAME_LENGTH + 64

    def __init__(self) -> None:
        self._pending = ""
        self._text: list[str] | None = None  # inside an <a> that the fast path missed
        self._text_len = 0
        self._done: list[ProjectEntry] = []

    def feed(self, text: str) -> list[ProjectEntry]:
        """Parse one chunk; returns the entries completed by it."""
        self._scan(self._pending + text, final=False)
        return self._take()

    def close(self) -> list[ProjectEntry]:
        """Flush; returns the last entries (an unclosed final anchor too)."""
        self._scan(self._pending, final=True)
        self._finish_anchor()
        return self._take()

    def _scan(self, buf: str, *, final: bool) -> None:
        pos, end = 0, len(buf)
        match = _ROOT_TOKEN.match
        waiting_allowed = not final
        while pos < end:
            token = match(buf, pos)
            assert token is not None  # "<" and "[^<]+" together match anything
            kind = token.lastgroup  # the outermost group: which alternative matched
            if waiting_allowed and end - pos <= self._MAX_PENDING:
                # A construct cut off by the chunk's end, or a trailing "<" / "</" that
                # may still become a tag: wait for the rest.
                if kind == "lt" and end - pos <= 2:
                    break
                cut_group = _OPEN_GROUPS.get(kind or "")
                if cut_group and token.end() == end and token[cut_group] is not None:
                    break
            pos = token.end()
            if kind == "anchor":
                self._finish_anchor()
                self._add(token["anchor_text"])
            elif (
                kind == "text" or kind == "lt" or (kind == "tag" and token["open_tag"] is not None)
            ):
                # A tag cut off by the end of input is text, as in html.parser.
                self._append_text(token[0])
            elif kind == "tag" and token["name"].lower() == "a":
                self._finish_anchor()  # also ends an unclosed previous <a>
                # "<a …/>" opens and closes at once, as html.parser (and pip) read it.
                if token["slash"] is None and not _self_closing(token[0]):
                    self._text, self._text_len = [], 0
            # Other tags, comments, script/style and declarations carry no entries.
        self._pending = buf[pos:]

    def _append_text(self, text: str) -> None:
        if self._text is not None and self._text_len <= self._MAX_TEXT:
            self._text.append(text)
            self._text_len += len(text)

    def _finish_anchor(self) -> None:
        if self._text is not None:
            text, self._text = "".join(self._text), None
            self._add(text)

    def _add(self, raw_text: str) -> None:
        # PEP 503: the anchor text is the project name; anything else is not a project.
        name = html.unescape(raw_text).strip()
        if is_valid_name(name):
            self._done.append(ProjectEntry(name))

    def _take(self) -> list[ProjectEntry]:
        done, self._done = self._done, []
        return done
