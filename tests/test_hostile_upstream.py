"""Hostile upstream pages (issue 12): what an index sends is bounded and checked once,
when its page is parsed, and nothing out of bounds reaches a client or steers a fetch.

Each test names one rule. The fast ones call the parser; the end-to-end ones put a
real pipgate in front of :class:`HostileIndex`, an upstream that answers with exactly
the bytes the test gives. Rules proven elsewhere, and only referenced here:

- credentials of an upstream go to its own origin only, never to a file host:
  ``tests/test_upstreams.py::test_credentials_in_the_upstream_url_reach_its_pages_and_files_and_nothing_else``
  and ``tests/test_network.py::test_private_index_credentials_go_to_its_origin_only``;
- a file link (or a ``<base href>``, or a redirect) to an origin outside the upstream's
  ``file_hosts`` is dropped (refused): ``tests/test_upstreams.py``;
- hash fragments of the wrong length or not hex: ``tests/test_parse.py``;
- a project list over ``limits.max_list_size`` (uncompressed): ``tests/test_limits.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipgate.app import create_app
from pipgate.simple.model import (
    MAX_DEPTH,
    MAX_FILENAME,
    MAX_HTML_ATTRS,
    MAX_SIZE,
    MAX_TEXT,
    MAX_URL,
    DistFile,
)
from pipgate.simple.parse import (
    SKIP_DUPLICATE,
    SKIP_SCHEME,
    PageParseError,
    parse_project_html,
    parse_project_json,
)
from tests.conftest import gate_config
from tests.support.links import JSON, file_path
from tests.support.metrics import metric_value
from tests.support.packages import BuiltDist, build_wheel

PAGE_URL = "https://upstream.example/simple/foo/"
SHA = "a" * 64
SHA_B = "b" * 64
MD5 = "0f" * 16
HTML = "text/html"


def json_body(files: list[dict[str, Any]], name: str = "foo", **extra: Any) -> bytes:
    return json.dumps(
        {"meta": {"api-version": "1.1"}, "name": name, "files": files, **extra}
    ).encode()


def entry(filename: str, url: str, **keys: Any) -> dict[str, Any]:
    return {"filename": filename, "url": url, "hashes": keys.pop("hashes", {}), **keys}


def nested(depth: int) -> Any:
    """A JSON value ``depth`` lists deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------------------------------
# A hostile upstream and pipgate in front of it


@dataclass
class Answer:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


class HostileIndex:
    """An upstream that answers each raw path (query included) with the bytes a test
    gives, 404 otherwise, and records every request it gets."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.seen: list[str] = []
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.StreamResponse:
            self.seen.append(request.raw_path)
            found = self.answers.get(request.raw_path)
            if found is None:
                return web.Response(status=404)
            return web.Response(status=found.status, body=found.body, headers=found.headers)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", answer)
        return app

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def index_url(self) -> str:
        return f"{self.origin}/simple/"

    def page(self, project: str, body: bytes, content_type: str = JSON, **headers: str) -> None:
        self.answers[f"/simple/{project}/"] = Answer(
            body, {"Content-Type": content_type, **headers}
        )

    def file(self, path: str, dist: BuiltDist) -> str:
        """Serve ``dist`` at ``path``; its absolute URL."""
        self.answers[path] = Answer(dist.data, {"Content-Type": "application/octet-stream"})
        return self.origin + path


Hosts = Callable[[], Awaitable[HostileIndex]]
Gate = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def hosts(aiohttp_server: Any) -> Hosts:
    """Start one more hostile host (the index, a file host...)."""

    async def start() -> HostileIndex:
        host = HostileIndex()
        host.server = await aiohttp_server(host.app())
        return host

    return start


@pytest.fixture
def gate_on(aiohttp_client: Any, tmp_path: Path) -> Gate:
    """pipgate in-process in front of a hostile index, with config overrides."""

    async def start(index: HostileIndex, cache: str = "cache", **overrides: object) -> TestClient:
        config = gate_config(tmp_path / cache, index.index_url, **overrides)
        client: TestClient = await aiohttp_client(create_app(config))
        return client

    return start


async def served_json(gate: TestClient, project: str) -> dict[str, Any]:
    resp = await gate.get(f"/simple/{project}/", headers={"Accept": JSON})
    assert resp.status == 200, await resp.text()
    page: dict[str, Any] = json.loads(await resp.read())
    return page


async def served_html(gate: TestClient, project: str) -> str:
    resp = await gate.get(f"/simple/{project}/", headers={"Accept": HTML})
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def failure_reasons(gate: TestClient) -> dict[str, int]:
    """The open ``/-/failures`` counts by reason, once one is there (written off the loop)."""
    by_reason: dict[str, int] = {}
    for _ in range(100):
        by_reason = (await (await gate.get("/-/failures")).json())["by_reason"]
        if by_reason:
            break
        await asyncio.sleep(0.02)
    return by_reason


async def metric(gate: TestClient, name: str, **labels: str) -> float:
    return metric_value(await (await gate.get("/metrics")).text(), name, **labels)


def wheel(name: str, version: str = "1.0", marker: bytes = b"") -> BuiltDist:
    return build_wheel(name, version, extra_files={f"{name}/marker.txt": marker or b"x"})


# ---------------------------------------------------------------------------------------
# (a) Links with other schemes; links to another host


HOSTILE_HREFS = [
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",  # URL parsers drop the tab: still javascript:
    "file:///etc/passwd",
    "data:application/zip;base64,UEsDBA==",
    "ftp://files.example/foo-1.0.tar.gz",
    "mailto:admin@example.com",
]


@pytest.mark.parametrize("href", HOSTILE_HREFS)
def test_a_link_that_is_not_http_is_left_out_of_html_and_json_pages(href: str) -> None:
    skipped: list[str] = []
    anchor = f'<a href="{href}">foo-1.0.tar.gz</a><a href="foo-2.0.tar.gz">x</a>'
    page = parse_project_html(anchor.encode(), PAGE_URL, "foo", on_skip=skipped.append)
    assert [d.filename for d in page.files] == ["foo-2.0.tar.gz"]
    files = [entry("foo-1.0.tar.gz", href), entry("foo-2.0.tar.gz", "foo-2.0.tar.gz")]
    page = parse_project_json(json_body(files), PAGE_URL, "foo", on_skip=skipped.append)
    assert [d.filename for d in page.files] == ["foo-2.0.tar.gz"]
    assert skipped == [SKIP_SCHEME, SKIP_SCHEME]


def test_an_entity_encoded_javascript_link_is_left_out_too() -> None:
    body = b'<a href="&#106;ava&#x73;cript:alert(1)">foo-1.0.tar.gz</a>'
    assert parse_project_html(body, PAGE_URL, "foo").files == ()


async def test_other_schemes_never_reach_clients_and_a_file_host_link_is_fetched_as_named(
    hosts: Hosts, gate_on: Gate
) -> None:
    index, cdn = await hosts(), await hosts()
    dist = wheel("foo")
    # A signed CDN URL: fetched as named, query and its significant escapes included
    # (aiohttp decodes "%2F", "%3A", "%40" in a query, which servers read the same).
    signed = cdn.file(f"/dl/{dist.filename}?Expires=1&Signature=a%2Bb%26c%3D", dist)
    files = [entry(f"foo-0.{n}.tar.gz", href) for n, href in enumerate(HOSTILE_HREFS)]
    files.append(entry(dist.filename, signed, hashes={"sha256": dist.sha256}))
    index.page("foo", json_body(files))
    gate = await gate_on(index, file_hosts=(cdn.origin,))

    page = await served_json(gate, "foo")
    assert [f["url"] for f in page["files"]] == [f"../../files/foo/{dist.sha256}/{dist.filename}"]
    resp = await gate.get(await file_path(gate, "foo", dist.filename))
    assert await resp.read() == dist.data
    assert cdn.seen == [signed.removeprefix(cdn.origin)]
    assert index.seen == ["/simple/foo/"]
    dropped = await metric(gate, "pipgate_links_dropped_total", cause="scheme")
    assert dropped == len(HOSTILE_HREFS)


# ---------------------------------------------------------------------------------------
# (b) Absurd sizes


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 0),
        (MAX_SIZE, MAX_SIZE),
        (MAX_SIZE + 1, None),  # past a 64-bit client's integer
        (2**70, None),
        (-5, None),
        (False, None),
        (1.5, None),
        (100.0, None),  # a float, even a whole one, is no byte count
        ("100", None),
        ([100], None),
    ],
)
def test_an_absurd_json_size_becomes_not_given(size: Any, expected: int | None) -> None:
    page = parse_project_json(
        json_body([entry("f-1.tar.gz", "f-1.tar.gz", size=size)]), PAGE_URL, "foo"
    )
    assert page.files[0].size == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 12 ", 12),
        (str(MAX_SIZE), MAX_SIZE),
        (str(MAX_SIZE + 1), None),
        ("9" * 30, None),
        ("-1", None),
        ("+1", None),
        ("1e3", None),
        ("0x10", None),
        ("\uff11\uff12", None),  # fullwidth digits: int() reads them, we do not
        ("", None),
    ],
)
def test_an_absurd_html_data_size_becomes_not_given(value: str, expected: int | None) -> None:
    body = f'<a href="f-1.tar.gz" data-size="{value}">f</a>'.encode()
    assert parse_project_html(body, PAGE_URL, "foo").files[0].size == expected


def test_the_size_bound_holds_for_pages_from_any_source() -> None:
    # The cache, an import or a merge build DistFiles directly: the model checks too.
    assert DistFile(filename="f-1.tar.gz", url=PAGE_URL, size=2**70).size is None
    assert DistFile(filename="f-1.tar.gz", url=PAGE_URL, size=True).size is None


async def test_a_file_with_an_absurd_size_is_served_without_one(
    hosts: Hosts, gate_on: Gate
) -> None:
    index = await hosts()
    dist = wheel("foo")
    url = index.file(f"/f/{dist.filename}", dist)
    index.page(
        "foo", json_body([entry(dist.filename, url, hashes={"sha256": dist.sha256}, size=2**70)])
    )
    gate = await gate_on(index)
    page = await served_json(gate, "foo")
    assert "size" not in page["files"][0]
    assert page["meta"]["api-version"] == "1.0"  # PEP 700: 1.1 promises every size
    assert "data-size" not in await served_html(gate, "foo")
    resp = await gate.get(await file_path(gate, "foo", dist.filename))
    assert await resp.read() == dist.data  # and the file is not refused as "too large"


def test_overlong_and_unsafe_fields_are_bounded() -> None:
    long_text = "x" * (MAX_TEXT + 1)
    files = [
        entry("f-1.tar.gz", "f-1.tar.gz", **{"requires-python": long_text, "yanked": long_text}),
        entry("f-2.tar.gz", "f-2.tar.gz", provenance="ftp://files.example/f-2.provenance"),
        entry("f-3.tar.gz", "f-3.tar.gz", provenance="/relative/provenance"),
        entry("f-4.tar.gz", "/" + "p" * MAX_URL + "/f-4.tar.gz"),  # too long a URL: no file
        entry("f" * (MAX_FILENAME - 6) + ".tar.gz", "long.tar.gz"),  # too long a name
        entry(".hidden-1.tar.gz", "hidden.tar.gz"),
        entry("f\x1b[31m-1.tar.gz", "ansi.tar.gz"),  # a terminal escape in log lines
    ]
    page = parse_project_json(json_body(files), PAGE_URL, "foo")
    first, second, third = page.files
    assert (first.requires_python, first.yanked) == (None, True)  # a yank stays a yank
    assert second.provenance is None and third.provenance is None
    attrs = "".join(f' data-a{n}="v"' for n in range(MAX_HTML_ATTRS + 5))
    body = f'<a href="f-1.tar.gz" data-long="{long_text}"{attrs}>f</a>'.encode()
    kept = parse_project_html(body, PAGE_URL, "foo").files[0].html_attrs
    assert list(kept) == [f"data-a{n}" for n in range(MAX_HTML_ATTRS)]


# ---------------------------------------------------------------------------------------
# (c) Duplicate filenames with different hashes


def test_the_first_of_two_html_links_with_one_filename_wins() -> None:
    body = (
        f'<a href="/a/f-1.tar.gz#sha256={SHA}">f-1.tar.gz</a>'
        f'<a href="/b/f-1.tar.gz#sha256={SHA_B}">f-1.tar.gz</a>'
        f'<a href="/c/f%2D1.tar.gz#sha256={SHA_B}">same name, percent-encoded</a>'
    ).encode()
    skipped: list[str] = []
    page = parse_project_html(body, PAGE_URL, "foo", on_skip=skipped.append)
    assert [(d.url, d.sha256) for d in page.files] == [
        ("https://upstream.example/a/f-1.tar.gz", SHA)
    ]
    assert skipped == [SKIP_DUPLICATE, SKIP_DUPLICATE]


def test_the_first_of_two_json_entries_with_one_filename_wins() -> None:
    files = [
        entry("f-1.tar.gz", "/a/f-1.tar.gz", hashes={"sha256": SHA}, yanked=False),
        entry("f-1.tar.gz", "/b/f-1.tar.gz", hashes={"sha256": SHA_B}, yanked="second"),
    ]
    skipped: list[str] = []
    page = parse_project_json(json_body(files), PAGE_URL, "foo", on_skip=skipped.append)
    assert [(d.sha256, d.yanked) for d in page.files] == [(SHA, False)]
    assert skipped == [SKIP_DUPLICATE]


@pytest.mark.parametrize("upstream_format", ["json", "html"])
async def test_duplicate_filenames_first_wins_in_served_pages_and_the_served_file(
    hosts: Hosts, gate_on: Gate, upstream_format: str
) -> None:
    index = await hosts()
    first, second = wheel("dup", marker=b"first"), wheel("dup", marker=b"second")
    name = first.filename
    assert name == second.filename and first.sha256 != second.sha256
    urls = [index.file(f"/a/{name}", first), index.file(f"/b/{name}", second)]
    if upstream_format == "json":
        files = [
            entry(name, u, hashes={"sha256": d.sha256})
            for u, d in zip(urls, (first, second), strict=True)
        ]
        index.page("dup", json_body(files, name="dup"))
    else:
        anchors = "".join(
            f'<a href="{u}#sha256={d.sha256}">{name}</a>'
            for u, d in zip(urls, (first, second), strict=True)
        )
        index.page("dup", f"<html><body>{anchors}</body></html>".encode(), HTML)
    gate = await gate_on(index)

    page = await served_json(gate, "dup")
    assert [(f["filename"], f["hashes"]) for f in page["files"]] == [
        (name, {"sha256": first.sha256})
    ]
    text = await served_html(gate, "dup")
    assert text.count(f">{name}</a>") == 1
    assert first.sha256 in text and second.sha256 not in text
    resp = await gate.get(await file_path(gate, "dup", name))
    assert await resp.read() == first.data
    assert f"/b/{name}" not in index.seen
    # The second file is not offered under its own hash either.
    assert (await gate.get(f"/files/dup/{second.sha256}/{name}")).status == 404
    assert await metric(gate, "pipgate_links_dropped_total", cause="duplicate") == 1


# ---------------------------------------------------------------------------------------
# (d) Malformed hashes


def test_a_malformed_core_metadata_hash_in_json_still_advertises_the_metadata() -> None:
    files = [entry("f-1.tar.gz", "f-1.tar.gz", **{"core-metadata": {"sha256": "nothex"}})]
    page = parse_project_json(json_body(files), PAGE_URL, "foo")
    assert page.files[0].core_metadata is True  # it exists; its hash is unknown


def test_an_unknown_hash_algorithm_is_passed_to_json_and_left_out_of_html() -> None:
    html_page = parse_project_html(b'<a href="f-1.tar.gz#blake3=zz">f</a>', PAGE_URL, "foo")
    assert html_page.files[0].hashes == {}
    files = [entry("f-1.tar.gz", "f-1.tar.gz", hashes={"blake3": "zz", "md5": MD5})]
    json_page = parse_project_json(json_body(files), PAGE_URL, "foo")
    assert json_page.files[0].hashes == {"blake3": "zz", "md5": MD5}


async def test_a_malformed_sha256_is_no_sha256(hosts: Hosts, gate_on: Gate) -> None:
    """A sha256 of the wrong length or not hex is dropped: the file is keyed by its URL
    (not by the bogus value, which no /files/ URL could carry), still downloads, and
    counts as unhashed for ``require_hashes``."""
    index = await hosts()
    short, nothex, unknown = wheel("odd", "1.0"), wheel("odd", "2.0"), wheel("odd", "3.0")
    published = {
        short.filename: {"sha256": short.sha256[:-1]},
        nothex.filename: {"sha256": "g" * 64},
        unknown.filename: {"blake3": "zz"},
    }
    files = [
        entry(d.filename, index.file(f"/f/{d.filename}", d), hashes=published[d.filename])
        for d in (short, nothex, unknown)
    ]
    index.page("odd", json_body(files, name="odd"))
    gate = await gate_on(index)
    page = await served_json(gate, "odd")
    served = {f["filename"]: f for f in page["files"]}
    assert {n: f["hashes"] for n, f in served.items()} == {
        short.filename: {},
        nothex.filename: {},
        unknown.filename: {"blake3": "zz"},  # for clients that know it; pipgate cannot
    }
    for dist in (short, nothex, unknown):
        assert served[dist.filename]["url"].split("/")[-2].startswith("u")  # a URL key
        resp = await gate.get(await file_path(gate, "odd", dist.filename))
        assert await resp.read() == dist.data
    hrefs = re.findall(r'href="([^"]*)"', await served_html(gate, "odd"))
    assert len(hrefs) == 3 and not any("#" in href for href in hrefs)  # no hash fragment

    strict = await gate_on(index, cache="strict", require_hashes=True)
    assert (await served_json(strict, "odd"))["files"] == []


# ---------------------------------------------------------------------------------------
# (e) Broken and deeply nested pages

GOOD = b'<html><a href="foo-1.0.tar.gz">foo-1.0.tar.gz</a>'


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b'<a href="x" data-y="' * 20_000, id="400KB-open-attribute-values"),
        pytest.param(b"<a " * 140_000, id="unclosed-tags"),
        pytest.param(b"<!--" * 100_000, id="unclosed-comments"),
        pytest.param(b"<![" * 140_000, id="marked-sections"),
        pytest.param(b"<![CDATA[" * 50_000, id="cdata-sections"),
        pytest.param(b"<!x" * 140_000, id="unclosed-declarations"),
        pytest.param(b"</a" * 140_000, id="unclosed-end-tags"),
        pytest.param(b"<script>" * 50_000, id="unclosed-scripts"),
        pytest.param(b'<a href="' + b"x" * 400_000, id="unclosed-quote"),
        pytest.param(b"<" * 400_000, id="bare-lt"),
    ],
)
def test_broken_html_parses_in_linear_time(tail: bytes) -> None:
    # html.parser took minutes on the first of these; the scanner stays linear.
    started = time.monotonic()
    page = parse_project_html(GOOD + tail, PAGE_URL, "foo")
    assert [d.filename for d in page.files] == ["foo-1.0.tar.gz"]
    assert time.monotonic() - started < 10


@pytest.mark.timeout(30)
def test_a_page_that_is_one_open_tag_is_not_an_html_page() -> None:
    with pytest.raises(PageParseError, match="not an HTML page"):
        parse_project_html(b'<a href="x" data-y="' * 20_000, PAGE_URL, "foo")


@pytest.mark.parametrize(
    "body",
    [
        b'{"files": [], "x": ' + b'{"a": ' * 100_000,
        b'{"files": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ],
)
def test_json_nested_past_the_parser_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(PageParseError, match="RecursionError"):
        parse_project_json(body, PAGE_URL, "foo")


def test_unknown_json_values_nested_deeper_than_max_depth_are_dropped() -> None:
    ok, deep = nested(MAX_DEPTH - 1), nested(MAX_DEPTH)
    files = [entry("f-1.tar.gz", "f-1.tar.gz", **{"x-ok": ok, "x-deep": deep})]
    doc = {
        "meta": {"api-version": "1.1", "_ok": ok, "_deep": deep},
        "project-status": {"status": "active", "ok": ok, "deep": deep},
        "x-ok": ok,
        "x-deep": deep,
    }
    page = parse_project_json(json_body(files, **doc), PAGE_URL, "foo")
    assert page.extra == {"x-ok": ok}
    assert page.meta_extra == {"_ok": ok}
    assert page.project_status == {"status": "active", "ok": ok}
    assert page.files[0].extra == {"x-ok": ok}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(JSON, b"[" * 100_000, id="json-arrays"),
        pytest.param(JSON, b'{"files": [], "x": ' + b'{"a": ' * 100_000, id="json-objects"),
        pytest.param(HTML, b'<a href="x" data-y="' * 20_000, id="html-one-open-tag"),
        pytest.param(JSON, b"\x00\xff" * 1000, id="binary"),
    ],
)
async def test_a_page_that_cannot_be_parsed_is_a_502_bad_page_never_a_500(
    hosts: Hosts, gate_on: Gate, content_type: str, body: bytes
) -> None:
    index = await hosts()
    index.page("foo", body, content_type)
    gate = await gate_on(index)
    resp = await gate.get("/simple/foo/")
    assert resp.status == 502, await resp.text()
    assert resp.headers["X-Pipgate-Reason"] == "bad_page"


@pytest.mark.timeout(60)
async def test_a_page_with_a_400kb_broken_tail_is_served_with_its_good_links(
    hosts: Hosts, gate_on: Gate
) -> None:
    index = await hosts()
    index.page("foo", GOOD + b'<a href="x" data-y="' * 20_000, HTML)
    gate = await gate_on(index)
    assert [f["filename"] for f in (await served_json(gate, "foo"))["files"]] == ["foo-1.0.tar.gz"]


async def test_values_nested_past_max_depth_never_reach_clients(
    hosts: Hosts, gate_on: Gate
) -> None:
    index = await hosts()
    deep = nested(MAX_DEPTH + 200)  # past uv's 128 levels: it would refuse the page
    files = [entry("foo-1.0.tar.gz", "/f/foo-1.0.tar.gz", **{"x-deep": deep, "x-ok": [1]})]
    index.page("foo", json_body(files, **{"x-deep": deep, "x-ok": [1]}))
    gate = await gate_on(index)
    page = await served_json(gate, "foo")
    assert "x-deep" not in page and page["x-ok"] == [1]
    assert "x-deep" not in page["files"][0] and page["files"][0]["x-ok"] == [1]


# ---------------------------------------------------------------------------------------
# (f) Gzip bombs

BOMB_SIZE = 50 << 20
LIMIT = 1 << 20


def gzip_bomb(size: int = BOMB_SIZE, head: bytes = b"") -> bytes:
    """``head`` then spaces up to ``size`` bytes, gzipped (~1000:1), built in steps."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip container
    out = [packer.compress(head)]
    block = b" " * (1 << 20)
    for _ in range((size - len(head)) >> 20):
        out.append(packer.compress(block))
    out.append(packer.flush())
    return b"".join(out)


def test_the_bomb_is_what_it_claims() -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 100_000
    assert len(gzip.decompress(bomb)) >= BOMB_SIZE


async def test_a_gzip_bomb_page_is_refused_at_max_page_size_in_bounded_memory(
    hosts: Hosts, gate_on: Gate
) -> None:
    index = await hosts()
    bomb = gzip_bomb(head=b'{"name": "foo", "files": [], "x": "')
    index.page("foo", bomb, JSON, **{"Content-Encoding": "gzip"})
    gate = await gate_on(index, max_page_size=LIMIT)
    tracemalloc.start()
    try:
        resp = await gate.get("/simple/foo/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 502
    assert resp.headers["X-Pipgate-Reason"] == "too_large"
    assert "decompressed" in await resp.text()
    assert await metric(gate, "pipgate_download_failures_total", reason="too_large") == 1
    # Inflated whole, the page would take 50 MB (and its parse several times that).
    assert peak < 16 << 20, peak


async def test_a_gzip_bomb_in_place_of_a_cached_page_serves_the_cached_one_stale(
    hosts: Hosts, gate_on: Gate
) -> None:
    index = await hosts()
    index.page("foo", json_body([entry("foo-1.0.tar.gz", "/f/foo-1.0.tar.gz")]))
    gate = await gate_on(index, max_page_size=LIMIT, index_ttl=0)
    assert len((await served_json(gate, "foo"))["files"]) == 1
    index.page("foo", gzip_bomb(), JSON, **{"Content-Encoding": "gzip"})
    resp = await gate.get("/simple/foo/", headers={"Accept": JSON})
    assert resp.status == 200
    assert resp.headers["X-Pipgate-Cache"] == "stale"
    assert len(json.loads(await resp.read())["files"]) == 1
    assert await metric(gate, "pipgate_download_failures_total", reason="too_large") == 1
    assert await failure_reasons(gate) == {"too_large": 1}


async def test_a_gzip_bomb_project_list_is_refused_at_max_list_size(
    hosts: Hosts, gate_on: Gate, tmp_path: Path
) -> None:
    index = await hosts()
    head = b"<!DOCTYPE html><html><body>" + b'<a href="/simple/a/">a</a>' * 100
    index.answers["/simple/"] = Answer(
        gzip_bomb(head=head), {"Content-Type": HTML, "Content-Encoding": "gzip"}
    )
    gate = await gate_on(index, max_list_size=LIMIT)
    tracemalloc.start()
    try:
        resp = await gate.get("/simple/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert resp.status == 502
    assert resp.headers["X-Pipgate-Reason"] == "too_large"
    assert "max_list_size" in await resp.text()
    # The partial download went no further than the limit, and is gone.
    leftovers = [p for p in (tmp_path / "cache" / "lists").rglob("*") if p.is_file()]
    assert leftovers == []


# ---------------------------------------------------------------------------------------
# (g) A JSON page of another project


@pytest.mark.parametrize(
    ("page_name", "accepted"),
    [
        (None, True),  # absent: PEP 691 requires it, but old indexes leave it out
        ("foo-bar", True),
        ("Foo_Bar", True),  # another spelling of the same project
        ("FOO.bar", True),
        ("foo", False),
        ("foo-bar-evil", False),
        ("", False),
        (5, False),
        (["foo-bar"], False),
    ],
)
def test_a_json_page_must_name_the_project_asked_for(page_name: Any, accepted: bool) -> None:
    doc: dict[str, Any] = {"files": []}
    if page_name is not None:
        doc["name"] = page_name
    body = json.dumps(doc).encode()
    if accepted:
        assert parse_project_json(body, PAGE_URL, "foo-bar").name == "foo-bar"
    else:
        with pytest.raises(PageParseError, match="not 'foo-bar'"):
            parse_project_json(body, PAGE_URL, "foo-bar")


async def test_a_redirect_to_another_projects_page_is_refused(hosts: Hosts, gate_on: Gate) -> None:
    index = await hosts()
    evil = wheel("evil")
    url = index.file(f"/f/{evil.filename}", evil)
    index.page("evil", json_body([entry(evil.filename, url)], name="evil"))
    # Same origin, so the redirect itself is allowed: the page's name is what is wrong.
    index.answers["/simple/foo/"] = Answer(b"", {"Location": "/simple/evil/"}, status=302)
    gate = await gate_on(index)
    resp = await gate.get("/simple/foo/")
    assert resp.status == 502
    assert resp.headers["X-Pipgate-Reason"] == "bad_page"
    assert "'evil'" in await resp.text()
    assert [f["filename"] for f in (await served_json(gate, "evil"))["files"]] == [evil.filename]


# ---------------------------------------------------------------------------------------
# (h) upload-time that is not a date-time


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("2024-01-02T03:04:05.123456Z", True),
        ("2024-01-02T03:04:05+01:00", True),
        ("2024-13-01T00:00:00Z", False),  # month 13
        ("2024-02-30T00:00:00Z", False),
        ("2024-01-01T24:00:00Z", False),
        ("2024-01-01T00:00:00+25:00", False),
        ("2024-01-01T00:00:00", False),  # no offset: whose local time?
        ("2024-01-01", False),
        ("yesterday", False),
        ("2024-01-01T00:00:00Z\n", False),
    ],
)
def test_an_upload_time_that_is_not_a_pep_700_date_time_is_dropped(value: str, kept: bool) -> None:
    files = [entry("f-1.tar.gz", "f-1.tar.gz", **{"upload-time": value})]
    from_json = parse_project_json(json_body(files), PAGE_URL, "foo").files[0]
    body = f'<a href="f-1.tar.gz" data-upload-time="{value}">f</a>'.encode()
    from_html = parse_project_html(body, PAGE_URL, "foo").files[0]
    expected = value if kept else None
    assert (from_json.upload_time, from_html.upload_time) == (expected, expected)


BAD_TIMES = {"1.0": "2020-13-01T00:00:00Z", "2.0": "2020-01-01T00:00:00", "3.0": "2020-01-01"}


async def bad_time_index(hosts: Hosts) -> tuple[HostileIndex, dict[str, BuiltDist]]:
    """Files stamped years ago, the first three unreadably, the last properly."""
    index = await hosts()
    dists = {v: wheel("stamped", v) for v in (*BAD_TIMES, "4.0")}
    files = [
        entry(
            d.filename,
            index.file(f"/f/{d.filename}", d),
            hashes={"sha256": d.sha256},
            size=d.size,
            **{"upload-time": BAD_TIMES.get(v, "2020-01-01T00:00:00Z")},
        )
        for v, d in dists.items()
    ]
    index.page("stamped", json_body(files, name="stamped"))
    return index, dists


async def test_an_unreadable_upload_time_is_not_served(hosts: Hosts, gate_on: Gate) -> None:
    index, dists = await bad_time_index(hosts)
    gate = await gate_on(index)
    page = await served_json(gate, "stamped")
    times = {f["filename"]: f.get("upload-time") for f in page["files"]}
    assert times == {
        **{dists[v].filename: None for v in BAD_TIMES},
        dists["4.0"].filename: "2020-01-01T00:00:00Z",
    }


async def test_an_unreadable_upload_time_does_not_pass_the_cooldown_as_old(
    hosts: Hosts, gate_on: Gate
) -> None:
    index, dists = await bad_time_index(hosts)
    gate = await gate_on(index, min_age=7 * 86400)
    page = await served_json(gate, "stamped")
    # Years old by their (unreadable) stamps; first seen now, so held back a week (a
    # file in its cooldown is listed yanked, with the date it will be released).
    yanked = {f["filename"]: f["yanked"] for f in page["files"]}
    assert yanked.pop(dists["4.0"].filename) is False
    assert set(yanked) == {dists[v].filename for v in BAD_TIMES}
    assert all("held back until" in str(reason) for reason in yanked.values()), yanked
    held = await gate.get(f"/files/stamped/{dists['2.0'].sha256}/{dists['2.0'].filename}")
    assert held.status == 403
    assert held.headers["X-Pipgate-Reason"] == "policy"
