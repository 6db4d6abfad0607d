"""Model -> client pages: round trips, spec rules, and an independent parser's view."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import pypi_simple
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipgate.simple.model import (
    KNOWN_HTML_ATTRS,
    KNOWN_JSON_FILE_KEYS,
    KNOWN_JSON_PAGE_KEYS,
    DistFile,
    ProjectEntry,
    ProjectPage,
)
from pipgate.simple.parse import (
    ProjectListHtmlParser,
    parse_project_html,
    parse_project_json,
    parse_project_list_json,
)
from pipgate.simple.render import (
    json_api_version,
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
)

PAGE_URL = "https://upstream.example/simple/foo/"
SHA = "0123456789abcdef" * 4
SHA_B = "fedcba9876543210" * 4


def identity(dist: DistFile) -> str:
    return dist.url


def pipgate_url(dist: DistFile) -> str:
    return f"http://pipgate.local/files/foo/{quote(dist.filename)}"


def _file(filename: str, **kwargs: Any) -> DistFile:
    return DistFile(filename=filename, url=f"https://files.example/p/{quote(filename)}", **kwargs)


FULL_PAGE = ProjectPage(
    name="foo",
    api_version="1.4",
    project_status={"status": "deprecated", "reason": 'use "bar" & <baz>'},
    files=(
        _file(
            "foo-1.0.tar.gz",
            hashes={"sha256": SHA},
            requires_python=">=3.8,<4",
            core_metadata={"sha256": SHA_B},
            size=10,
            upload_time="2024-01-02T03:04:05.123456Z",
            provenance="https://pypi.org/integrity/foo/1.0/foo-1.0.tar.gz/provenance",
        ),
        _file("foo-1.1-py3-none-any.whl", hashes={"sha256": SHA}, yanked=True, size=11),
        _file(
            "foo-1.2.tar.gz",
            hashes={"md5": "00ff" * 8},
            yanked='broken <3 & "bad"',
            core_metadata=True,
            gpg_sig=True,
            size=12,
        ),
        _file("foo-1.3.tar.gz", gpg_sig=False, html_attrs={"data-custom": 'a"b'}, size=13),
        _file('foo-1.4"><img src=x onerror=alert(1)>.tar.gz', size=14),
    ),
)


# ---------------------------------------------------------------------------------------
# HTML


def test_html_round_trip_of_a_full_page() -> None:
    html = render_project_html(FULL_PAGE, identity)
    assert parse_project_html(html, PAGE_URL, "foo") == FULL_PAGE


def test_html_shape() -> None:
    html = render_project_html(FULL_PAGE, pipgate_url).decode()
    assert html.startswith("<!DOCTYPE html>\n")
    assert '<meta name="pypi:repository-version" content="1.4">' in html
    assert '<meta name="pypi:project-status" content="deprecated">' in html
    assert (
        '<meta name="pypi:project-status-reason" content="use &quot;bar&quot; &amp; &lt;baz&gt;">'
        in html
    )
    assert "<title>Links for foo</title>" in html
    assert "<h1>Links for foo</h1>" in html
    assert html.count("<a ") == 5
    assert html.count("<br/>") == 5
    assert "<img" not in html
    assert (
        f'<a href="http://pipgate.local/files/foo/foo-1.0.tar.gz#sha256={SHA}"'
        ' data-requires-python="&gt;=3.8,&lt;4"'
        f' data-core-metadata="sha256={SHA_B}" data-dist-info-metadata="sha256={SHA_B}"'
        ' data-provenance="https://pypi.org/integrity/foo/1.0/foo-1.0.tar.gz/provenance"'
        ' data-size="10" data-upload-time="2024-01-02T03:04:05.123456Z">foo-1.0.tar.gz</a><br/>'
    ) in html


MD5, SHA1, SHA512, BLAKE2B = "0f" * 16, "cc" * 20, "aa" * 64, "bb" * 64


@pytest.mark.parametrize(
    ("hashes", "fragment"),
    [
        ({"sha256": SHA, "md5": MD5}, f"#sha256={SHA}"),
        ({"md5": MD5, "sha512": SHA512}, f"#sha512={SHA512}"),
        ({"blake2b": BLAKE2B, "md5": MD5}, f"#md5={MD5}"),
        ({"blake2b": BLAKE2B}, f"#blake2b={BLAKE2B}"),
        # PEP 503: lowercase name, digest as given
        ({"SHA256": SHA.upper()}, f"#sha256={SHA.upper()}"),
        # A malformed digest is no hash (the model drops it).
        ({"sha256": "not hex", "sha1": SHA1}, f"#sha1={SHA1}"),
        ({"md5": "00"}, ""),
        ({"blake2b_256": "dd"}, ""),
        ({}, ""),
    ],
)
def test_html_fragment_hash_choice(hashes: dict[str, str], fragment: str) -> None:
    page = ProjectPage(name="foo", files=(_file("foo-1.0.tar.gz", hashes=hashes),))
    html = render_project_html(page, identity).decode()
    assert f'href="https://files.example/p/foo-1.0.tar.gz{fragment}"' in html


class _PipLikeAnchors(HTMLParser):
    """Collects anchor attributes the way pip's HTMLLinkParser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


@pytest.mark.parametrize(("yanked", "expected"), [(True, ""), ("", ""), ("why", "why")])
def test_html_yanked_is_never_a_bare_attribute(yanked: bool | str, expected: str) -> None:
    page = ProjectPage(name="foo", files=(_file("foo-1.0.tar.gz", yanked=yanked),))
    html = render_project_html(page, identity).decode()
    assert re.search(r"data-yanked(?!=)", html) is None
    parser = _PipLikeAnchors()
    parser.feed(html)
    # pip treats a value of None (bare attribute) as "not yanked".
    assert parser.anchors[0]["data-yanked"] == expected


@pytest.mark.parametrize(
    ("api_version", "expected"),
    [
        ("1.0", "1.0"),
        ("1.3", "1.3"),
        ("1.4", "1.4"),
        ("1.5", "1.4"),  # PEP 833: HTML is frozen at 1.4
        ("1.10", "1.4"),  # compared as numbers, not strings
        ("garbage", "1.0"),
    ],
)
def test_html_repository_version_is_capped(api_version: str, expected: str) -> None:
    html = render_project_html(ProjectPage(name="foo", api_version=api_version), identity)
    assert f'<meta name="pypi:repository-version" content="{expected}">'.encode() in html


def test_html_url_for_is_used_and_provenance_is_not_rewritten() -> None:
    page = parse_project_html(render_project_html(FULL_PAGE, pipgate_url), PAGE_URL, "foo")
    assert page.files[0].url == "http://pipgate.local/files/foo/foo-1.0.tar.gz"
    assert page.files[0].provenance == FULL_PAGE.files[0].provenance


# ---------------------------------------------------------------------------------------
# JSON


def test_json_round_trip_of_a_full_page() -> None:
    page = ProjectPage(
        name=FULL_PAGE.name,
        files=tuple(
            DistFile(**{**_fields(f), "html_attrs": {}, "extra": {"x-new": [1]}})
            for f in FULL_PAGE.files
        ),
        api_version="1.4",
        versions=("1.0", "1.1"),
        project_status={"status": "archived", "reason": "r"},
        meta_extra={"_last-serial": 5},
        extra={"alternate-locations": []},
    )
    assert parse_project_json(render_project_json(page, identity), PAGE_URL, "foo") == page


def _fields(dist: DistFile) -> dict[str, Any]:
    return {name: getattr(dist, name) for name in DistFile.__dataclass_fields__}


def test_json_shape_and_key_order() -> None:
    doc = json.loads(render_project_json(FULL_PAGE, pipgate_url))
    assert list(doc) == ["meta", "name", "files", "versions", "project-status"]
    assert doc["meta"] == {"api-version": "1.4"}
    assert list(doc["files"][0]) == [
        "filename",
        "url",
        "hashes",
        "requires-python",
        "core-metadata",
        "data-dist-info-metadata",
        "yanked",
        "size",
        "upload-time",
        "provenance",
    ]
    first = doc["files"][0]
    assert first["url"] == "http://pipgate.local/files/foo/foo-1.0.tar.gz"  # no fragment
    assert first["provenance"] == FULL_PAGE.files[0].provenance  # PEP 740: unchanged
    assert first["requires-python"] == ">=3.8,<4"  # PEP 691: no HTML escaping
    assert [f["yanked"] for f in doc["files"]] == [False, True, 'broken <3 & "bad"', False, False]
    assert doc["files"][3]["hashes"] == {}  # PEP 691: always present
    assert "data-custom" not in json.dumps(doc)  # html_attrs are HTML-only


def test_json_never_emits_dist_info_metadata() -> None:
    # PEP 714: pip 22.3-23.1 crashes on "dist-info-metadata" in JSON.
    page = ProjectPage(
        name="foo",
        files=(
            _file("foo-1.0.tar.gz", core_metadata={"sha256": SHA}),
            _file("foo-1.1.tar.gz", core_metadata=True, extra={"dist-info-metadata": True}),
            _file("foo-1.2.tar.gz"),
        ),
    )
    doc = json.loads(render_project_json(page, identity))
    for entry in doc["files"]:
        assert "dist-info-metadata" not in entry
        assert entry.get("core-metadata") == entry.get("data-dist-info-metadata")
    assert doc["files"][0]["core-metadata"] == {"sha256": SHA}
    assert doc["files"][1]["core-metadata"] is True
    assert "core-metadata" not in doc["files"][2]


def test_json_omits_none_fields_but_always_sends_yanked_and_hashes() -> None:
    page = ProjectPage(name="foo", files=(_file("foo-1.0.tar.gz"),))
    (entry,) = json.loads(render_project_json(page, identity))["files"]
    assert entry == {
        "filename": "foo-1.0.tar.gz",
        "url": "https://files.example/p/foo-1.0.tar.gz",
        "hashes": {},
        "yanked": False,
    }


def test_json_meta_extra_and_extra_cannot_override_known_keys() -> None:
    page = ProjectPage(
        name="foo",
        api_version="1.0",
        meta_extra={"api-version": "9.9", "_last-serial": 1},
        extra={"name": "evil", "files": [], "x": 1},
        files=(_file("foo-1.0.tar.gz", extra={"url": "evil", "filename": "evil"}),),
    )
    doc = json.loads(render_project_json(page, identity))
    assert doc["meta"] == {"api-version": "1.0", "_last-serial": 1}
    assert doc["name"] == "foo"
    assert doc["x"] == 1
    assert doc["files"][0]["url"] == "https://files.example/p/foo-1.0.tar.gz"


SIZED = (_file("foo-1.0.tar.gz", size=1), _file("foo-1.1-py3-none-any.whl", size=2))
UNSIZED = (_file("foo-1.0.tar.gz", size=1), _file("foo-1.1-py3-none-any.whl"))
ODD = (*SIZED, _file("foo-weird.exe", size=3), _file("foo-2.0b1.zip", size=4))


@pytest.mark.parametrize(
    ("api_version", "files", "versions", "status", "expected_version", "expected_versions"),
    [
        # Upstream's version is kept when what it promises is there.
        ("1.4", SIZED, ("1.0", "1.1"), None, "1.4", ["1.0", "1.1"]),
        ("1.1", SIZED, ("1.1",), None, "1.1", ["1.1"]),
        ("1.5", SIZED, ("1.0",), None, "1.5", ["1.0"]),  # JSON is not capped
        # PEP 700: versions is mandatory from 1.1; derived from filenames when missing.
        ("1.4", SIZED, None, None, "1.4", ["1.0", "1.1"]),
        ("1.4", ODD, None, None, "1.4", ["1.0", "1.1", "2.0b1"]),
        # PEP 700: size is mandatory from 1.1; a size-less file means 1.0.
        ("1.4", UNSIZED, None, None, "1.0", None),
        ("1.4", UNSIZED, ("1.0",), None, "1.0", ["1.0"]),
        # 1.0 stays 1.0, even with sizes: never upgrade.
        ("1.0", SIZED, None, None, "1.0", None),
        ("1.0", UNSIZED, ("1.0",), None, "1.0", ["1.0"]),
        # A quarantined page offers no files, so nothing is missing.
        ("1.4", UNSIZED, None, {"status": "quarantined"}, "1.4", []),
        ("garbage", SIZED, None, None, "1.0", None),
    ],
)
def test_json_api_version_downgrade_rule(
    api_version: str,
    files: tuple[DistFile, ...],
    versions: tuple[str, ...] | None,
    status: dict[str, str] | None,
    expected_version: str,
    expected_versions: list[str] | None,
) -> None:
    page = ProjectPage(
        name="foo", files=files, api_version=api_version, versions=versions, project_status=status
    )
    assert json_api_version(page) == expected_version
    doc = json.loads(render_project_json(page, identity))
    assert doc["meta"]["api-version"] == expected_version
    assert doc.get("versions") == expected_versions
    assert len(doc["files"]) == len(page.offered_files())  # nothing else is dropped


def test_json_output_is_deterministic_ascii() -> None:
    page = ProjectPage(name="foo", files=(_file("föö-1.0.tar.gz", requires_python="\ud800"),))
    first = render_project_json(page, identity)
    assert first == render_project_json(page, identity)
    assert first.isascii()
    assert parse_project_json(first, PAGE_URL, "foo").files[0].requires_python == "\ud800"


# ---------------------------------------------------------------------------------------
# Quarantine (PEP 792)


def test_quarantined_project_renders_no_files() -> None:
    page = ProjectPage(
        name="foo",
        api_version="1.4",
        files=FULL_PAGE.files,
        project_status={"status": "quarantined", "reason": "malware"},
    )
    html = render_project_html(page, identity).decode()
    assert "<a " not in html
    assert '<meta name="pypi:project-status" content="quarantined">' in html
    doc = json.loads(render_project_json(page, identity))
    assert doc["files"] == []
    assert doc["project-status"] == {"status": "quarantined", "reason": "malware"}


# ---------------------------------------------------------------------------------------
# pypi-simple, an independent parser, must read the same things.


def _assert_pypi_simple_agrees(
    packages: list[pypi_simple.DistributionPackage], page: ProjectPage
) -> None:
    """Fields an independent parser must read exactly as our own model has them."""
    files = page.offered_files()
    assert [p.filename for p in packages] == [f.filename for f in files]
    for pkg, dist in zip(packages, files, strict=True):
        assert pkg.url == dist.url
        assert pkg.requires_python == dist.requires_python
        assert pkg.is_yanked is (dist.yanked is not False)
        if isinstance(dist.yanked, str):
            assert pkg.yanked_reason == dist.yanked
        assert pkg.has_sig == dist.gpg_sig
        assert bool(pkg.has_metadata) is bool(dist.core_metadata)
        if isinstance(dist.core_metadata, dict):
            assert pkg.metadata_digests == dist.core_metadata
        assert pkg.digests == dist.hashes


def test_pypi_simple_reads_our_html() -> None:
    parsed = pypi_simple.ProjectPage.from_html(
        "foo", render_project_html(FULL_PAGE, identity), base_url=PAGE_URL
    )
    assert parsed.repository_version == "1.4"
    assert parsed.status == pypi_simple.ProjectStatus.DEPRECATED
    assert parsed.status_reason == 'use "bar" & <baz>'
    packages = parsed.packages
    assert [p.filename for p in packages] == [f.filename for f in FULL_PAGE.files]
    for pkg, dist in zip(packages, FULL_PAGE.files, strict=True):
        assert pkg.url == dist.url
        assert pkg.digests == dist.hashes
        assert pkg.requires_python == dist.requires_python
        assert pkg.is_yanked is (dist.yanked is not False)
        assert pkg.has_sig == dist.gpg_sig
        assert bool(pkg.has_metadata) is bool(dist.core_metadata)
        assert pkg.provenance_url == dist.provenance
    assert [p.yanked_reason for p in packages] == [None, "", 'broken <3 & "bad"', None, None]
    assert packages[0].metadata_digests == {"sha256": SHA_B}


def test_pypi_simple_reads_our_json() -> None:
    body = render_project_json(FULL_PAGE, identity)
    parsed = pypi_simple.ProjectPage.from_json_data(json.loads(body), base_url=PAGE_URL)
    assert parsed.repository_version == "1.4"
    assert parsed.versions == ["1.0", "1.1", "1.2", "1.3"]  # derived; the odd name skipped
    for pkg, dist in zip(parsed.packages, FULL_PAGE.files, strict=True):
        assert pkg.filename == dist.filename
        assert pkg.url == dist.url
        assert pkg.digests == dist.hashes
        assert pkg.requires_python == dist.requires_python
        assert pkg.size == dist.size
        assert pkg.is_yanked is (dist.yanked is not False)
        assert pkg.yanked_reason == (dist.yanked if isinstance(dist.yanked, str) else None)
        assert pkg.has_sig == dist.gpg_sig
        assert bool(pkg.has_metadata) is bool(dist.core_metadata)
        assert pkg.provenance_url == dist.provenance


# ---------------------------------------------------------------------------------------
# Property-based round trips

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_NONEMPTY = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)
#: Hex digests of the right length for their algorithm (others are parsed as no hash).
_HEX_LENGTH = {"sha256": 64, "sha512": 128, "md5": 32, "blake2b": 128}


def _hexdigest(name: str) -> st.SearchStrategy[str]:
    size = _HEX_LENGTH[name]
    return st.text("0123456789abcdefABCDEF", min_size=size, max_size=size)
_FILENAME = _NONEMPTY.filter(lambda s: s not in (".", "..") and not set(s) & set("/\\\x00"))
_DATA_KEY = st.from_regex(r"data-[a-z0-9_.:-]{1,10}", fullmatch=True).filter(
    lambda k: k not in KNOWN_HTML_ATTRS
)


@st.composite
def _html_file(draw: st.DrawFn) -> DistFile:
    """A file with only what HTML can carry (one hash, no extra)."""
    filename = draw(_FILENAME)
    hash_name = draw(st.sampled_from(["sha256", "sha512", "md5", "blake2b"]))
    return _file(
        filename,
        hashes=draw(st.one_of(st.just({}), _hexdigest(hash_name).map(lambda h: {hash_name: h}))),
        requires_python=draw(st.none() | _TEXT),
        core_metadata=draw(
            st.sampled_from([None, True]) | _hexdigest("sha256").map(lambda h: {"sha256": h})
        ),
        gpg_sig=draw(st.sampled_from([None, True, False])),
        yanked=draw(st.sampled_from([False, True]) | _NONEMPTY),
        size=draw(st.none() | st.integers(0, 10**15)),
        upload_time=draw(st.none() | _NONEMPTY),
        provenance=draw(st.none() | _NONEMPTY),
        html_attrs=draw(st.dictionaries(_DATA_KEY, _TEXT, max_size=2)),
    )


_STATUS = st.none() | st.fixed_dictionaries(
    {"status": st.sampled_from(["active", "archived", "deprecated"]) | _TEXT},
    optional={"reason": _TEXT},
).filter(lambda s: s["status"] != "quarantined")
_HTML_PAGE = st.builds(
    ProjectPage,
    name=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
    files=st.lists(_html_file(), max_size=5).map(tuple),
    api_version=st.sampled_from(["1.0", "1.1", "1.2", "1.3", "1.4"]),
    project_status=_STATUS,
)

_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON_VALUE = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _json_file(draw: st.DrawFn, sized: bool) -> DistFile:
    """A file with everything JSON can carry (any hashes, extra keys, any strings)."""
    any_text = st.text(max_size=20)  # lone surrogates too: JSON escapes them
    return _file(
        draw(_FILENAME),
        hashes=draw(st.dictionaries(any_text, any_text, max_size=3)),
        requires_python=draw(st.none() | any_text),
        core_metadata=draw(
            st.sampled_from([None, True, False]) | st.dictionaries(_TEXT, _TEXT, max_size=2)
        ),
        gpg_sig=draw(st.sampled_from([None, True, False])),
        yanked=draw(st.sampled_from([False, True]) | st.text(min_size=1, max_size=20)),
        size=draw(st.integers(0, 10**18) if sized else st.none() | st.integers(0, 10**18)),
        upload_time=draw(st.none() | any_text),
        provenance=draw(st.none() | any_text),
        extra=draw(
            st.dictionaries(
                _TEXT.filter(lambda k: k not in KNOWN_JSON_FILE_KEYS), _JSON_VALUE, max_size=2
            )
        ),
    )


# Not quarantined (that hides files), and no "state" alias (the parser copies it).
_STATUS_ANY = st.none() | st.dictionaries(_TEXT, _JSON_VALUE, max_size=2).filter(
    lambda s: s.get("status") != "quarantined" and "state" not in s
)


@st.composite
def _json_page(draw: st.DrawFn) -> ProjectPage:
    """A page consistent with the 1.1 rules, so json_api_version keeps its version."""
    api_version = draw(st.sampled_from(["1.0", "1.1", "1.3", "1.4", "1.7"]))
    modern = api_version != "1.0"
    versions = st.lists(_TEXT, max_size=3).map(tuple)
    return ProjectPage(
        name=draw(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)),
        files=tuple(draw(st.lists(_json_file(sized=modern), max_size=4))),
        api_version=api_version,
        versions=draw(versions if modern else st.none() | versions),
        project_status=draw(_STATUS_ANY),
        meta_extra=draw(
            st.dictionaries(
                _TEXT.filter(lambda k: k not in ("api-version", "project-status")),
                _JSON_VALUE,
                max_size=2,
            )
        ),
        extra=draw(
            st.dictionaries(_TEXT.filter(lambda k: k not in KNOWN_JSON_PAGE_KEYS), _JSON_VALUE)
        ),
    )


_JSON_PAGE = _json_page()
_SETTINGS = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_HTML_PAGE)
def test_html_round_trip(page: ProjectPage) -> None:
    html = render_project_html(page, identity)
    assert parse_project_html(html, PAGE_URL, page.name) == page


@_SETTINGS
@given(_JSON_PAGE)
def test_json_round_trip(page: ProjectPage) -> None:
    assert json_api_version(page) == page.api_version
    body = render_project_json(page, identity)
    assert parse_project_json(body, PAGE_URL, page.name) == page


@_SETTINGS
@given(_HTML_PAGE)
def test_pypi_simple_agrees_with_our_html(page: ProjectPage) -> None:
    # pypi-simple strips the anchor text it reads filenames from, and knows only the
    # PEP 792 statuses; neither is a property of our output.
    assume(all(f.filename == f.filename.strip() for f in page.files))
    if page.project_status is not None:
        page = replace(page, project_status={"status": "archived"})
    html = render_project_html(page, identity)
    parsed = pypi_simple.ProjectPage.from_html(page.name, html, base_url=PAGE_URL)
    _assert_pypi_simple_agrees(parsed.packages, page)
    assert parsed.repository_version == page.api_version


@_SETTINGS
@given(_HTML_PAGE)
def test_html_never_has_a_bare_yanked_attribute(page: ProjectPage) -> None:
    parser = _PipLikeAnchors()
    parser.feed(render_project_html(page, identity).decode())
    for anchor, dist in zip(parser.anchors, page.files, strict=True):
        assert ("data-yanked" in anchor) is (dist.yanked is not False)
        assert anchor.get("data-yanked", "") is not None


@_SETTINGS
@given(_JSON_PAGE)
def test_json_never_has_dist_info_metadata_key(page: ProjectPage) -> None:
    doc = json.loads(render_project_json(page, identity))
    assert all("dist-info-metadata" not in f for f in doc["files"])


# ---------------------------------------------------------------------------------------
# Root list (streamed)

ENTRIES = [ProjectEntry(f"Proj_{i}.X") for i in range(5000)] + [
    ProjectEntry("Zope.Interface"),
    ProjectEntry("six"),
]


def test_root_html_streams_and_parses_back() -> None:
    chunks = list(render_project_list_html(iter(ENTRIES), api_version="1.4"))
    assert len(chunks) > 3  # really streamed in batches
    parser = ProjectListHtmlParser()
    parsed: list[ProjectEntry] = []
    for chunk in chunks:
        parsed += parser.feed(chunk.decode())
    parsed += parser.close()
    assert parsed == ENTRIES
    html = b"".join(chunks).decode()
    assert html.startswith("<!DOCTYPE html>")
    assert '<meta name="pypi:repository-version" content="1.4">' in html
    # PEP 503: text is the display name, href the relative normalised project URL.
    assert '<a href="zope-interface/">Zope.Interface</a>' in html
    assert '<a href="proj-0-x/">Proj_0.X</a>' in html


def test_root_html_is_read_by_pypi_simple() -> None:
    html = b"".join(render_project_list_html(ENTRIES[-2:]))
    assert pypi_simple.IndexPage.from_html(html).projects == ["Zope.Interface", "six"]


def test_root_json_streams_and_parses_back() -> None:
    chunks = list(render_project_list_json(iter(ENTRIES), api_version="1.1"))
    assert len(chunks) > 3
    body = b"".join(chunks)
    assert parse_project_list_json(body) == ENTRIES
    doc = json.loads(body)
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["projects"][-2] == {"name": "Zope.Interface"}


@pytest.mark.parametrize("render", [render_project_list_html, render_project_list_json])
def test_root_empty_list_is_valid(render: Any) -> None:
    body = b"".join(render([]))
    if body.startswith(b"{"):
        assert json.loads(body) == {"meta": {"api-version": "1.0"}, "projects": []}
    else:
        parser = ProjectListHtmlParser()
        assert parser.feed(body.decode()) + parser.close() == []


@pytest.mark.parametrize("render", [render_project_list_html, render_project_list_json])
def test_root_rendering_is_lazy(render: Any) -> None:
    consumed = 0

    def entries() -> Any:
        nonlocal consumed
        for entry in ENTRIES:
            consumed += 1
            yield entry

    stream = render(entries())
    next(stream)
    next(stream)
    assert consumed < len(ENTRIES)  # constant memory: not everything read up front


def test_root_html_escapes_odd_names() -> None:
    html = b"".join(render_project_list_html([ProjectEntry('a"<b>/..')])).decode()
    assert '<a href="a%22%3Cb%3E%2F-/">a&quot;&lt;b&gt;/..</a>' in html
