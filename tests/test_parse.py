"""Upstream pages -> model: PEP 503 HTML and PEP 691 JSON, tolerant of bad entries."""

from __future__ import annotations

import contextlib
import json
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipgate.simple.model import DistFile, ProjectEntry, ProjectPage
from pipgate.simple.names import is_valid_name
from pipgate.simple.parse import (
    PageParseError,
    ProjectListHtmlParser,
    parse_project_html,
    parse_project_json,
    parse_project_list_json,
)
from pipgate.simple.render import render_project_html, render_project_json

PAGE_URL = "https://upstream.example/simple/foo/"
SHA = "a" * 64
SHA_B = "b" * 64
MD5 = "0f" * 16

# ---------------------------------------------------------------------------------------
# HTML

_ANCHORS = [
    f'<a href="foo-1.0.tar.gz#sha256={SHA}" data-requires-python="&gt;=3.8,&lt;4">'
    "foo-1.0.tar.gz</a><br/>",
    f'<a href="../files/foo-1.1-py3-none-any.whl#SHA256={SHA}&amp;egg=foo" data-yanked>x</a>',
    '<a href="https://cdn.example/f/foo-1.2.tar.gz?token=1#egg=foo-1.2" data-yanked="">'
    "foo-1.2.tar.gz</a>",
    f'<a href="//cdn.example/f/foo-1.3.tar.gz#md5={MD5}"'
    ' data-yanked="broken &lt;3 &amp; &quot;bad&quot;">foo-1.3.tar.gz</a>',
    '<a href="foo-1.4.tar.gz" data-core-metadata="true"'
    f' data-dist-info-metadata="sha256={SHA_B}">foo-1.4.tar.gz</a>',
    f'<a href="foo-1.5.tar.gz" data-core-metadata="sha256={SHA_B}">foo-1.5.tar.gz</a>',
    f'<a href="foo-1.6.tar.gz" data-dist-info-metadata="sha256={SHA_B}">foo-1.6.tar.gz</a>',
    '<a href="foo-1.7.tar.gz" data-gpg-sig="true" data-size="1234"'
    ' data-upload-time="2024-01-02T03:04:05.123456Z">foo-1.7.tar.gz</a>',
    '<a href="foo-1.8.tar.gz" data-gpg-sig="false" data-size="lots"'
    ' data-provenance="https://pypi.org/integrity/foo/1.8/foo-1.8.tar.gz/provenance">'
    "foo-1.8.tar.gz</a>",
    '<a href="foo%201.9.tar.gz" class="c" data-Custom="v" data-flag data-bad"x="1">'
    "foo 1.9.tar.gz</a>",
    '<a href="https://cdn.example/download/?id=7">foo-2.0.tar.gz</a>',
    "<a>no href</a>",
    '<a href="">empty href</a>',
    '<a href="javascript:alert(1)">foo-evil.tar.gz</a>',
    '<a href="file:///etc/passwd">passwd</a>',
    '<a href="https://cdn.example/%2e%2e">..</a>',
    '<a href="https://cdn.example/a%2Fb.tar.gz">a/b.tar.gz</a>',
]
_ANCHOR_LINES = "\n    ".join(_ANCHORS)
HTML_PAGE = f"""<!DOCTYPE html>
<html>
  <head>
    <meta name="pypi:repository-version" content="1.3">
    <meta name="pypi:project-status" content="deprecated">
    <meta name="pypi:project-status-reason" content="use bar &amp; baz">
    <base href="/packages/">
    <base href="/ignored/">
    <title>Links for foo</title>
  </head>
  <body>
    <h1>Links for foo</h1>
    {_ANCHOR_LINES}
  </body>
</html>
"""


def _html_files() -> dict[str, DistFile]:
    page = parse_project_html(HTML_PAGE.encode(), PAGE_URL, "foo")
    return {f.filename: f for f in page.files}


def test_html_page_level_fields() -> None:
    page = parse_project_html(HTML_PAGE.encode(), PAGE_URL, "foo")
    assert page.name == "foo"
    assert page.api_version == "1.3"
    assert page.versions is None
    assert page.project_status == {"status": "deprecated", "reason": "use bar & baz"}
    assert page.status == "deprecated"


def test_html_skips_unusable_anchors() -> None:
    # No href, empty href, non-http schemes and unsafe filenames are dropped.
    assert list(_html_files()) == [
        "foo-1.0.tar.gz",
        "foo-1.1-py3-none-any.whl",
        "foo-1.2.tar.gz",
        "foo-1.3.tar.gz",
        "foo-1.4.tar.gz",
        "foo-1.5.tar.gz",
        "foo-1.6.tar.gz",
        "foo-1.7.tar.gz",
        "foo-1.8.tar.gz",
        "foo 1.9.tar.gz",
        "foo-2.0.tar.gz",
    ]


@pytest.mark.parametrize(
    ("filename", "field", "expected"),
    [
        # URLs: first <base href> wins, resolved against the page URL; fragment stripped.
        ("foo-1.0.tar.gz", "url", "https://upstream.example/packages/foo-1.0.tar.gz"),
        (
            "foo-1.1-py3-none-any.whl",
            "url",
            "https://upstream.example/files/foo-1.1-py3-none-any.whl",
        ),
        ("foo-1.2.tar.gz", "url", "https://cdn.example/f/foo-1.2.tar.gz?token=1"),
        ("foo-1.3.tar.gz", "url", "https://cdn.example/f/foo-1.3.tar.gz"),
        ("foo 1.9.tar.gz", "url", "https://upstream.example/packages/foo%201.9.tar.gz"),
        # Hashes: lowercase name, digest as given; egg= ignored.
        ("foo-1.0.tar.gz", "hashes", {"sha256": SHA}),
        ("foo-1.1-py3-none-any.whl", "hashes", {"sha256": SHA}),
        ("foo-1.2.tar.gz", "hashes", {}),
        ("foo-1.3.tar.gz", "hashes", {"md5": MD5}),
        # requires-python arrives unescaped.
        ("foo-1.0.tar.gz", "requires_python", ">=3.8,<4"),
        ("foo-1.2.tar.gz", "requires_python", None),
        # PEP 592: bare and empty data-yanked both mean yanked without reason.
        ("foo-1.0.tar.gz", "yanked", False),
        ("foo-1.1-py3-none-any.whl", "yanked", True),
        ("foo-1.2.tar.gz", "yanked", True),
        ("foo-1.3.tar.gz", "yanked", 'broken <3 & "bad"'),
        # PEP 658/714: data-core-metadata first, data-dist-info-metadata as fallback.
        ("foo-1.0.tar.gz", "core_metadata", None),
        ("foo-1.4.tar.gz", "core_metadata", True),
        ("foo-1.5.tar.gz", "core_metadata", {"sha256": SHA_B}),
        ("foo-1.6.tar.gz", "core_metadata", {"sha256": SHA_B}),
        # gpg-sig, uv's data-size / data-upload-time, PEP 740 provenance.
        ("foo-1.7.tar.gz", "gpg_sig", True),
        ("foo-1.8.tar.gz", "gpg_sig", False),
        ("foo-1.0.tar.gz", "gpg_sig", None),
        ("foo-1.7.tar.gz", "size", 1234),
        ("foo-1.8.tar.gz", "size", None),
        ("foo-1.7.tar.gz", "upload_time", "2024-01-02T03:04:05.123456Z"),
        (
            "foo-1.8.tar.gz",
            "provenance",
            "https://pypi.org/integrity/foo/1.8/foo-1.8.tar.gz/provenance",
        ),
        # Other data-* attributes pass through (names lowercased by the HTML tokenizer).
        ("foo 1.9.tar.gz", "html_attrs", {"data-custom": "v", "data-flag": ""}),
        ("foo-1.0.tar.gz", "html_attrs", {}),
        # The anchor text is only a fallback when the URL has no last path segment.
        ("foo-2.0.tar.gz", "url", "https://cdn.example/download/?id=7"),
    ],
)
def test_html_file_fields(filename: str, field: str, expected: Any) -> None:
    assert getattr(_html_files()[filename], field) == expected


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        ('<a href="f-1.tar.gz" data-yanked>f</a>', True),
        ('<a href="f-1.tar.gz" data-yanked="">f</a>', True),
        ('<a href="f-1.tar.gz" data-yanked="gone">f</a>', "gone"),
        ('<a href="f-1.tar.gz" data-yanked=\'a "b"\'>f</a>', 'a "b"'),
        ('<a href="f-1.tar.gz">f</a>', False),
    ],
)
def test_html_yanked_table(anchor: str, expected: bool | str) -> None:
    page = parse_project_html(f"<html><body>{anchor}</body></html>".encode(), PAGE_URL, "f")
    assert page.files[0].yanked == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("false", False),
        (f"sha256={SHA}", {"sha256": SHA}),
        (f"SHA512={SHA * 2}", {"sha512": SHA * 2}),
        # Advertised, but the hash is unusable: metadata exists, with no hash to check.
        ("sha256=nothex", True),
        (f"sha512={SHA}", True),  # a sha256-length value is no sha512
        ("garbage", None),
        ("", None),
    ],
)
def test_html_core_metadata_values(value: str, expected: Any) -> None:
    body = f'<a href="f-1.tar.gz" data-core-metadata="{value}">f</a>'.encode()
    assert parse_project_html(body, PAGE_URL, "f").files[0].core_metadata == expected


def test_html_core_metadata_wins_over_the_old_name() -> None:
    body = (
        f'<a href="f-1.tar.gz" data-core-metadata="sha256={SHA}"'
        ' data-dist-info-metadata="true">f</a>'
    )
    assert parse_project_html(body.encode(), PAGE_URL, "f").files[0].core_metadata == {
        "sha256": SHA
    }


@pytest.mark.parametrize(
    ("head", "api_version", "status"),
    [
        ("", "1.0", None),  # PEP 629: missing means 1.0
        ('<meta name="pypi:repository-version" content="1.4">', "1.4", None),
        ('<meta name="PyPI:Repository-Version" content=" 1.10 ">', "1.10", None),
        (
            '<meta name="pypi:project-status" content="quarantined">',
            "1.0",
            {"status": "quarantined"},
        ),
    ],
)
def test_html_meta_tags(head: str, api_version: str, status: Any) -> None:
    page = parse_project_html(f"<html><head>{head}</head></html>".encode(), PAGE_URL, "f")
    assert page.api_version == api_version
    assert page.project_status == status


def test_html_without_base_resolves_against_page_url() -> None:
    body = b'<a href="../../packages/f-1.tar.gz">f-1.tar.gz</a><a href="/abs/f-2.tar.gz">x</a>'
    files = parse_project_html(body, PAGE_URL, "f").files
    assert [f.url for f in files] == [
        "https://upstream.example/packages/f-1.tar.gz",
        "https://upstream.example/abs/f-2.tar.gz",
    ]


def test_html_tolerates_bad_bytes_and_broken_markup() -> None:
    body = b'\xef\xbb\xbf<html><![ broken ]]><a href="f-1.tar.gz" data-x="\xff">f</a><!-- unclosed'
    files = parse_project_html(body, PAGE_URL, "f").files
    assert [f.filename for f in files] == ["f-1.tar.gz"]
    assert files[0].html_attrs == {"data-x": "\ufffd"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \n",
        b"just some text",
        b'{"meta": {"api-version": "1.0"}, "files": []}',
        b"\x00\x01\x02\xff\xfe",
        b'<html><head><meta name="pypi:repository-version" content="2.0"></head></html>',
        b'<html><head><meta name="pypi:repository-version" content="one"></head></html>',
    ],
)
def test_html_garbage_raises_page_parse_error(body: bytes) -> None:
    with pytest.raises(PageParseError):
        parse_project_html(body, PAGE_URL, "foo")


def test_html_empty_project_page_is_fine() -> None:
    page = parse_project_html(b"<!DOCTYPE html><html><body></body></html>", PAGE_URL, "foo")
    assert page.files == ()


# ---------------------------------------------------------------------------------------
# JSON

PYPI_LIKE: dict[str, Any] = {
    "meta": {"_last-serial": 123, "api-version": "1.4"},
    "name": "Foo",
    "project-status": {"status": "active"},
    "versions": ["1.0", "1.1"],
    "alternate-locations": [],
    "files": [
        {
            "filename": "foo-1.0.tar.gz",
            "url": "https://files.example/packages/ab/cd/foo-1.0.tar.gz",
            "hashes": {"sha256": SHA, "blake2b_256": "ff"},
            "requires-python": ">=3.8",
            "size": 100,
            "upload-time": "2024-01-02T03:04:05.123456Z",
            "yanked": False,
            "data-dist-info-metadata": {"sha256": SHA_B},
            "core-metadata": {"sha256": SHA_B},
            "provenance": None,
        },
        {
            "filename": "foo-1.1-py3-none-any.whl",
            "url": "../../packages/foo-1.1-py3-none-any.whl#sha256=ignored",
            "hashes": {},
            "requires-python": None,
            "size": 200,
            "yanked": "broken",
            "gpg-sig": True,
            "provenance": "https://pypi.org/integrity/foo/1.1/foo-1.1-py3-none-any.whl/provenance",
            "x-future": {"a": [1, 2]},
        },
        {
            "filename": "foo-1.1.tar.gz",
            "url": "/p/foo-1.1.tar.gz?sig=abc",
            "hashes": {"sha256": SHA},
            "yanked": "",
            "dist-info-metadata": True,
        },
    ],
}


def _json_page(doc: dict[str, Any] = PYPI_LIKE) -> ProjectPage:
    return parse_project_json(json.dumps(doc).encode(), PAGE_URL, "foo")


def test_json_page_level_fields() -> None:
    page = _json_page()
    assert page.name == "foo"  # the name pipgate asked for, not upstream's display name
    assert page.api_version == "1.4"
    assert page.versions == ("1.0", "1.1")
    assert page.project_status == {"status": "active"}
    assert page.meta_extra == {"_last-serial": 123}
    assert page.extra == {"alternate-locations": []}


def test_json_file_fields() -> None:
    first, second, third = _json_page().files
    assert first == DistFile(
        filename="foo-1.0.tar.gz",
        url="https://files.example/packages/ab/cd/foo-1.0.tar.gz",
        hashes={"sha256": SHA, "blake2b_256": "ff"},  # byte-identical, unknown names kept
        requires_python=">=3.8",
        core_metadata={"sha256": SHA_B},
        size=100,
        upload_time="2024-01-02T03:04:05.123456Z",
    )
    assert second.url == "https://upstream.example/packages/foo-1.1-py3-none-any.whl"
    assert second.hashes == {}
    assert second.yanked == "broken"
    assert second.gpg_sig is True
    assert second.provenance == (
        "https://pypi.org/integrity/foo/1.1/foo-1.1-py3-none-any.whl/provenance"
    )
    assert second.extra == {"x-future": {"a": [1, 2]}}
    assert third.url == "https://upstream.example/p/foo-1.1.tar.gz?sig=abc"
    assert third.yanked is True  # an empty reason still means yanked
    assert third.core_metadata is True  # from the deprecated "dist-info-metadata"
    assert third.extra == {}  # ...which is consumed, never passed through


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"core-metadata": True, "data-dist-info-metadata": {"sha256": SHA}}, True),
        ({"core-metadata": None, "data-dist-info-metadata": {"sha256": SHA}}, {"sha256": SHA}),
        ({"dist-info-metadata": {"sha256": SHA}}, {"sha256": SHA}),
        ({"core-metadata": "yes", "dist-info-metadata": True}, True),
        ({"core-metadata": {"sha256": 5}}, None),
        ({"core-metadata": False}, False),
        ({}, None),
    ],
)
def test_json_core_metadata_precedence(keys: dict[str, Any], expected: Any) -> None:
    entry = {"filename": "f-1.tar.gz", "url": "f-1.tar.gz", "hashes": {}, **keys}
    page = _json_page({"meta": {"api-version": "1.0"}, "files": [entry]})
    assert page.files[0].core_metadata == expected


@pytest.mark.parametrize(
    "entry",
    [
        "not a dict",
        None,
        ["filename"],
        {"url": "f-1.tar.gz", "hashes": {}},
        {"filename": "f-1.tar.gz", "hashes": {}},
        {"filename": 5, "url": "f-1.tar.gz"},
        {"filename": "f-1.tar.gz", "url": 5},
        {"filename": "f-1.tar.gz", "url": "f-1.tar.gz", "hashes": ["sha256", SHA]},
        {"filename": "f-1.tar.gz", "url": "f-1.tar.gz", "hashes": {"sha256": 1}},
        {"filename": "f-1.tar.gz", "url": "f-1.tar.gz", "requires-python": 3},
        {"filename": "f-1.tar.gz", "url": "f-1.tar.gz", "yanked": 1},
        {"filename": "../evil.tar.gz", "url": "f-1.tar.gz"},
        {"filename": "..", "url": "f-1.tar.gz"},
        {"filename": "", "url": "f-1.tar.gz"},
        {"filename": "f-1.tar.gz", "url": "file:///etc/passwd"},
        {"filename": "f-1.tar.gz", "url": "http://[::1/f-1.tar.gz"},
    ],
)
def test_json_malformed_entries_are_skipped(entry: Any) -> None:
    good = {"filename": "g-1.tar.gz", "url": "g-1.tar.gz", "hashes": {}}
    page = _json_page({"meta": {"api-version": "1.0"}, "files": [entry, good]})
    assert [f.filename for f in page.files] == ["g-1.tar.gz"]


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        # Informational fields of the wrong type are dropped, the file is kept.
        ({"size": "100"}, "size", None),
        ({"size": True}, "size", None),
        ({"size": -1}, "size", None),
        ({"gpg-sig": "true"}, "gpg_sig", None),
        ({"upload-time": 5}, "upload_time", None),
        ({"provenance": 5}, "provenance", None),
        ({"yanked": None}, "yanked", False),
        ({"hashes": None}, "hashes", {}),
        ({"url": "f-1.tar.gz#sha256=x"}, "url", "https://upstream.example/simple/foo/f-1.tar.gz"),
    ],
)
def test_json_lenient_fields(extra: dict[str, Any], field: str, expected: Any) -> None:
    entry = {"filename": "f-1.tar.gz", "url": "f-1.tar.gz", **extra}
    page = _json_page({"meta": {"api-version": "1.0"}, "files": [entry]})
    assert getattr(page.files[0], field) == expected


@pytest.mark.parametrize(
    ("doc", "status", "meta_extra"),
    [
        ({"project-status": {"status": "quarantined"}}, "quarantined", {}),
        # The living spec's example puts it under meta.
        ({"meta": {"project-status": {"status": "archived"}}}, "archived", {}),
        # PEP 792's prose says "state".
        ({"project-status": {"state": "quarantined"}}, "quarantined", {}),
        ({"project-status": "deprecated"}, "deprecated", {}),
        ({"project-status": None}, "active", {}),
        ({"project-status": 5}, "active", {}),
        ({"meta": {"_x": 1}}, "active", {"_x": 1}),
    ],
)
def test_json_project_status(doc: dict[str, Any], status: str, meta_extra: Any) -> None:
    page = _json_page({"files": [], **doc})
    assert page.status == status
    assert page.meta_extra == meta_extra


@pytest.mark.parametrize(
    ("meta", "expected"),
    [({}, "1.0"), ({"api-version": "1.1"}, "1.1"), ({"api-version": "1.99"}, "1.99")],
)
def test_json_api_version(meta: dict[str, Any], expected: str) -> None:
    assert _json_page({"meta": meta, "files": []}).api_version == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"string"',
        b"null",
        b"123",
        b'{"meta": {"api-version": "1.0"}}',  # no files list
        b'{"files": {}}',
        b'{"meta": [], "files": []}',
        b'{"meta": {"api-version": "2.0"}, "files": []}',  # PEP 629: unknown major
        b'{"meta": {"api-version": 1.0}, "files": []}',
        b'{"meta": {"api-version": "v1"}, "files": []}',
        b'{"files": [], "x": NaN}',
        b'{"files": [], "x": Infinity}',
        b"[" * 100_000,
        b'{"files": [], "x": ' + b"1" * 5000 + b"}",
        b"\xff\xfe\x00",
        b"<html></html>",
    ],
)
def test_json_garbage_raises_page_parse_error(body: bytes) -> None:
    with pytest.raises(PageParseError):
        parse_project_json(body, PAGE_URL, "foo")


def test_json_utf8_bom_is_accepted() -> None:
    page = parse_project_json(b'\xef\xbb\xbf{"files": []}', PAGE_URL, "foo")
    assert page.files == ()


# ---------------------------------------------------------------------------------------
# Root list


def test_project_list_json() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.1", "_last-serial": 5},
            "projects": [
                {"name": "Zope.Interface", "_last-serial": 1},
                {"name": "six"},
                {"name": "../evil"},
                {"name": 5},
                "nope",
                {},
            ],
        }
    ).encode()
    assert parse_project_list_json(body) == [ProjectEntry("Zope.Interface"), ProjectEntry("six")]


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{}", b'{"projects": {}}', b'{"meta": {"api-version": "2.0"}, "projects": []}', b"x"],
)
def test_project_list_json_garbage(body: bytes) -> None:
    with pytest.raises(PageParseError):
        parse_project_list_json(body)


ROOT_HTML = """<!DOCTYPE html>
<html><head><meta name="pypi:repository-version" content="1.4"><title>Simple index</title>
<style>a::before { content: "<a>x</a>"; }</style>
<script>document.write('<a href="/simple/nope/">Script</a>');</script>
</head>
<body>
<a href="/simple/zope-interface/">Zope.Interface</a><br/>
<a href="/simple/six/">  six  </a>
<A HREF='/simple/upper/' >Upper</A >
<a href="/simple/x/">not a name</a>
<a href="/simple/a-b/">A&#95;B</a>
<!-- <a href="/simple/commented/">Commented</a> -->
<abbr>Abbr</abbr>
<a title="a > b" href="/simple/quoted/">Quoted</a>
<a href="/simple/nested/"><b>Nested</b></a>
x < y <3 </ >
<a>Unclosed
</body></html>"""
ROOT_NAMES = ["Zope.Interface", "six", "Upper", "A_B", "Quoted", "Nested", "Unclosed"]


class _ReferenceRootParser(HTMLParser):
    """The obvious html.parser implementation, to check the fast scanner against."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.names: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._finish()
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._finish()

    def handle_data(self, data: str) -> None:
        if self._text is not None and self.cdata_elem is None:  # script/style is not text
            self._text.append(data)

    def _finish(self) -> None:
        if self._text is not None:
            name = "".join(self._text).strip()
            self._text = None
            if is_valid_name(name):
                self.names.append(name)

    def parse(self, text: str) -> list[str]:
        self.feed(text)
        self.close()
        self._finish()
        return self.names


def _parse_root(text: str, chunk_size: int) -> list[str]:
    parser = ProjectListHtmlParser()
    entries: list[ProjectEntry] = []
    for i in range(0, len(text), chunk_size):
        entries += parser.feed(text[i : i + chunk_size])
    entries += parser.close()
    return [e.name for e in entries]


def test_project_list_html_whole_page() -> None:
    assert _parse_root(ROOT_HTML, len(ROOT_HTML)) == ROOT_NAMES
    assert _ReferenceRootParser().parse(ROOT_HTML) == ROOT_NAMES


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 4096])
def test_project_list_html_chunked_equals_whole(chunk_size: int) -> None:
    assert _parse_root(ROOT_HTML, chunk_size) == ROOT_NAMES


def test_project_list_html_returns_entries_as_they_complete() -> None:
    parser = ProjectListHtmlParser()
    assert parser.feed('<a href="a/">a</a><a href="b/">b') == [ProjectEntry("a")]
    assert parser.feed("</") == []
    assert parser.feed("a>") == [ProjectEntry("b")]
    assert parser.close() == []


def test_project_list_html_unclosed_anchor_text_is_bounded() -> None:
    parser = ProjectListHtmlParser()
    parser.feed("<a>")
    for _ in range(1000):
        assert parser.feed("x" * 1000) == []
    assert sum(map(len, parser._text or [])) < 2000  # bounded, not 1 MB of text
    assert parser.close() == []  # far too long to be a name


def test_project_list_html_unclosed_comment_is_bounded() -> None:
    parser = ProjectListHtmlParser()
    parser.feed("<!--")
    for _ in range(300):
        parser.feed("x" * 1000)
        assert len(parser._pending) <= ProjectListHtmlParser._MAX_PENDING + 1000
    assert parser.feed('<a href="a/">after</a>') == [ProjectEntry("after")]


_ROOT_PIECES = st.sampled_from(
    [
        '<a href="/simple/p/">Proj.One</a>\n',
        "<a href='x/' data-x=\"1 > 0\">two_2</a>",
        "<A HREF=x>Three</A>",
        "<a>four&amp;</a>",
        "<a>Five&#46;5</a>",
        "<a><i>Six</i></a>",
        "<br/>",
        "<!-- <a>hidden</a> -->",
        "<script><a>hidden</a></script>",
        "<abbr>no</abbr>",
        "text < 3 ",
        "\n    ",
        "<!DOCTYPE html>",
        "<a href=",
        "</a>",
        "<a>",
        "&",
        "<",
    ]
)


@pytest.mark.parametrize(
    "text",
    [
        "<a href=text < 3 <br/><abbr>no</abbr>",  # "/>" ends the tag: it closes itself
        "<a href=<br/><abbr>no</abbr>",  # the slash is the unquoted value's: still open
        '<a href="x/" />gone</a>',
        "<a href=/simple/y/>Y</a>",
    ],
)
def test_project_list_html_self_closing_anchors_as_html_parser_reads_them(text: str) -> None:
    """Cases hypothesis found: whether ``<a …/>`` closes itself is html.parser's rule."""
    for chunk_size in (1, 3, len(text)):
        assert _parse_root(text, chunk_size) == _ReferenceRootParser().parse(text)


@settings(max_examples=300)
@given(st.lists(_ROOT_PIECES, max_size=30).map("".join), st.integers(1, 50))
def test_project_list_html_matches_html_parser(text: str, chunk_size: int) -> None:
    # On real-world shapes the fast scanner and html.parser agree, however chunked.
    assert _parse_root(text, chunk_size) == _ReferenceRootParser().parse(text)


# ---------------------------------------------------------------------------------------
# Fuzzing: only PageParseError, for any input; whatever parses also renders.

_HTML_TOKENS = st.sampled_from(
    [
        "<a ",
        "<a href=",
        '"',
        "'",
        ">",
        "</a>",
        "<base href=",
        "<meta ",
        "name=",
        "pypi:repository-version",
        "pypi:project-status",
        "content=",
        "1.0",
        "2.0",
        "1.x",
        "data-yanked",
        "data-core-metadata=",
        "data-dist-info-metadata",
        "data-size=",
        "data-gpg-sig=",
        "data-requires-python=",
        "data-x",
        "true",
        "sha256=",
        "ab",
        "#",
        "&amp;",
        "&#",
        "&#x110000;",
        "&lt;",
        "<![",
        "<!--",
        "-->",
        "<!DOCTYPE",
        "<?",
        "]]>",
        "f-1.tar.gz",
        "/",
        "../",
        "%2f",
        "%",
        "http://",
        "https://h/",
        "http://[::1",
        "javascript:",
        " ",
        "\n",
        "\x00",
        "\ud800",
        "<script>",
        "</script>",
        "=",
    ]
)
_HTML_TEXT = st.lists(st.one_of(_HTML_TOKENS, st.text(max_size=5)), max_size=40).map("".join)

_JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
)
_JSON_VALUE = st.recursive(
    _JSON_SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_FILE_KEYS = st.sampled_from(
    [
        "filename",
        "url",
        "hashes",
        "requires-python",
        "core-metadata",
        "dist-info-metadata",
        "data-dist-info-metadata",
        "gpg-sig",
        "yanked",
        "size",
        "upload-time",
        "provenance",
        "x",
    ]
)
_FILE = st.dictionaries(_FILE_KEYS, _JSON_VALUE | st.just("f-1.tar.gz"), max_size=8)
_META = st.dictionaries(
    st.sampled_from(["api-version", "_last-serial", "project-status"]),
    _JSON_VALUE | st.sampled_from(["1.0", "1.1", "1.4", "2.0", "x"]),
)
_PAGE_DOC = st.fixed_dictionaries(
    {"files": st.lists(_FILE | _JSON_VALUE, max_size=5)},
    optional={
        "meta": _META | _JSON_VALUE,
        "versions": _JSON_VALUE,
        "project-status": _JSON_VALUE,
        "projects": st.lists(_JSON_VALUE, max_size=3),
        "extra-key": _JSON_VALUE,
    },
)
_JSON_BODY = st.one_of(
    _PAGE_DOC.map(lambda d: json.dumps(d).encode()),
    _JSON_VALUE.map(lambda d: json.dumps(d).encode()),
)


def _identity(dist: DistFile) -> str:
    return dist.url


@settings(max_examples=300)
@given(st.one_of(st.binary(), _HTML_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_fuzz_html_parsers_raise_only_page_parse_error(body: bytes) -> None:
    try:
        page = parse_project_html(body, PAGE_URL, "f")
    except PageParseError:
        pass
    else:
        render_project_json(page, _identity)
        reparsed = parse_project_html(render_project_html(page, _identity), PAGE_URL, "f")
        assert [f.filename for f in reparsed.files] == [f.filename for f in page.offered_files()]
    # The root scanner never raises at all.
    parser = ProjectListHtmlParser()
    text = body.decode("utf-8", "replace")
    parser.feed(text[: len(text) // 2])
    parser.feed(text[len(text) // 2 :])
    parser.close()


@settings(max_examples=300)
@given(st.one_of(st.binary(), _JSON_BODY))
def test_fuzz_json_parsers_raise_only_page_parse_error(body: bytes) -> None:
    try:
        page = parse_project_json(body, PAGE_URL, "f")
    except PageParseError:
        pass
    else:
        render_project_html(page, _identity)
        parse_project_json(render_project_json(page, _identity), PAGE_URL, "f")
    with contextlib.suppress(PageParseError):
        parse_project_list_json(body)


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        (f"sha256={SHA}", {"sha256": SHA}),
        (f"sha256={SHA.upper()}", {"sha256": SHA.upper()}),  # hex in either case
        (f"sha256={SHA[:-1]}", {}),  # one digit short
        (f"sha256={SHA}0", {}),  # one digit long
        (f"sha256={'g' * 64}", {}),  # not hex
        (f"md5={MD5}", {"md5": MD5}),
        (f"md5={SHA}", {}),  # a sha256-length md5
        (f"sha1={'c' * 40}", {"sha1": "c" * 40}),
        (f"shake_128={'d' * 64}", {}),  # no fixed length: never a usable hash
        (f"sha256=&md5={MD5}", {"md5": MD5}),  # an empty value is no hash
    ],
)
def test_html_hashes_are_used_only_when_hex_of_the_right_length(
    fragment: str, expected: dict[str, str]
) -> None:
    body = f'<a href="f-1.tar.gz#{fragment}">f</a>'.encode()
    assert parse_project_html(body, PAGE_URL, "f").files[0].hashes == expected


def test_json_hashes_of_known_algorithms_must_have_their_length() -> None:
    entry = {
        "filename": "f-1.tar.gz",
        "url": "f-1.tar.gz",
        "hashes": {"sha256": "abc", "md5": MD5, "blake2b_256": "ff", "sha512": SHA},
    }
    body = json.dumps({"meta": {"api-version": "1.0"}, "name": "f", "files": [entry]})
    dist = parse_project_json(body.encode(), PAGE_URL, "f").files[0]
    # The malformed sha256 and sha512 are dropped (no hash, so the URL key is not the
    # bogus value); names pipgate does not know are passed through for clients.
    assert dist.hashes == {"md5": MD5, "blake2b_256": "ff"}
    assert dist.sha256 is None


def test_links_that_are_not_http_are_reported_to_the_skip_callback() -> None:
    body = (
        b'<a href="javascript:alert(1)">f-1.tar.gz</a>'
        b'<a href="file:///etc/passwd">f-2.tar.gz</a>'
        b'<a href="f-3.tar.gz">f-3.tar.gz</a>'
    )
    skipped: list[str] = []
    page = parse_project_html(body, PAGE_URL, "f", on_skip=skipped.append)
    assert [d.filename for d in page.files] == ["f-3.tar.gz"]
    assert skipped == ["scheme", "scheme"]
    entries = [
        {"filename": "f-1.tar.gz", "url": "ftp://x/f-1.tar.gz", "hashes": {}},
        {"filename": "f-2.tar.gz", "url": "f-2.tar.gz", "hashes": {}},
    ]
    doc = json.dumps({"meta": {"api-version": "1.0"}, "name": "f", "files": entries})
    skipped.clear()
    page = parse_project_json(doc.encode(), PAGE_URL, "f", on_skip=skipped.append)
    assert [d.filename for d in page.files] == ["f-2.tar.gz"]
    assert skipped == ["scheme"]
