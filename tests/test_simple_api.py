"""The simple repository API as pipgate serves it, against the fake upstream."""

from __future__ import annotations

import gzip
import json

import pytest
from aiohttp.test_utils import TestClient
from pypi_simple import ProjectPage as IndependentPage
from yarl import URL

from tests.conftest import GateFactory
from tests.support.fake_pypi import FakePyPI

JSON = "application/vnd.pypi.simple.v1+json"
VHTML = "application/vnd.pypi.simple.v1+html"
PIP_ACCEPT = f"{JSON}, {VHTML}; q=0.1, text/html; q=0.01"


async def test_pip_accept_gets_exact_json_content_type_and_vary(gate: TestClient) -> None:
    resp = await gate.get("/simple/alpha/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JSON
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"
    body = json.loads(await resp.read())
    assert body["name"] == "alpha"
    assert body["meta"]["api-version"] == "1.1"


@pytest.mark.parametrize(
    ("accept", "query", "content_type"),
    [
        (None, "", "text/html; charset=utf-8"),
        ("*/*", "", "text/html; charset=utf-8"),
        ("text/html", "", "text/html; charset=utf-8"),
        (VHTML, "", VHTML),
        ("application/vnd.pypi.simple.latest+json", "", JSON),
        ("application/json", "", "text/html; charset=utf-8"),
        ("text/html", f"?format={JSON}", JSON),
        (JSON, "?format=text/html", "text/html; charset=utf-8"),
        (JSON, "?format=bogus", JSON),
    ],
)
async def test_format_is_negotiated_by_accept_and_format_parameter(
    gate: TestClient, accept: str | None, query: str, content_type: str
) -> None:
    headers = {"Accept": accept} if accept else {}
    resp = await gate.get(f"/simple/alpha/{query}", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == content_type


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/simple/Zope.Interface/", "../zope-interface/"),
        ("/simple/zope_interface", "zope-interface/"),
        ("/simple/alpha", "alpha/"),
        ("/simple", "simple/"),
        ("/simple/ALPHA/?format=text/html", "../alpha/?format=text/html"),
    ],
)
async def test_non_normalised_names_and_missing_slash_redirect_permanently(
    gate: TestClient, path: str, location: str
) -> None:
    resp = await gate.get(path, allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == location


async def test_unknown_project_is_404_and_negatively_cached(
    gate: TestClient, upstream: FakePyPI
) -> None:
    for _ in range(3):
        resp = await gate.get("/simple/no-such-project/")
        assert resp.status == 404
        assert (await resp.text()).startswith("pipgate: ")
    assert upstream.count("/simple/no-such-project/") == 1


async def test_page_etag_answers_if_none_match_with_304(gate: TestClient) -> None:
    first = await gate.get("/simple/alpha/", headers={"Accept": JSON})
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    again = await gate.get("/simple/alpha/", headers={"Accept": JSON, "If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    html = await gate.get("/simple/alpha/", headers={"Accept": "text/html"})
    assert html.headers["ETag"] != etag


async def test_gzip_variant_has_its_own_strong_etag(gate: TestClient) -> None:
    plain = await gate.get("/simple/beta/", headers={"Accept": JSON, "Accept-Encoding": "identity"})
    packed = await gate.get(
        "/simple/beta/", headers={"Accept": JSON, "Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["ETag"] != plain.headers["ETag"]
    assert gzip.decompress(await packed.read()) == await plain.read()


async def test_expired_page_is_revalidated_with_upstream_validators(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(index_ttl=0)
    await gate.get("/simple/alpha/")
    resp = await gate.get("/simple/alpha/")
    assert resp.headers["X-Pipgate-Cache"] == "revalidated"
    conditional = upstream.headers_for("/simple/alpha/")[-1]
    assert "if-none-match" in conditional


async def test_upstream_without_validators_is_refetched_and_compared(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    upstream.validators = False
    gate = await make_gate(index_ttl=0)
    first = await gate.get("/simple/alpha/")
    second = await gate.get("/simple/alpha/")
    assert second.headers["X-Pipgate-Cache"] == "revalidated"
    assert second.headers["ETag"] == first.headers["ETag"]
    assert upstream.count("/simple/alpha/") == 2


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0"])
async def test_client_no_cache_forces_revalidation(
    gate: TestClient, upstream: FakePyPI, directive: str
) -> None:
    await gate.get("/simple/alpha/")
    await gate.get("/simple/alpha/")
    assert upstream.count("/simple/alpha/") == 1
    resp = await gate.get("/simple/alpha/", headers={"Cache-Control": directive})
    assert resp.status == 200
    assert upstream.count("/simple/alpha/") == 2


async def test_yank_change_upstream_shows_after_ttl(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(index_ttl=0)
    await gate.get("/simple/beta/")
    upstream.set_yanked("beta-1.0-py3-none-any.whl", "bad build")
    body = json.loads(await (await gate.get("/simple/beta/", headers={"Accept": JSON})).read())
    yanked = {f["filename"]: f["yanked"] for f in body["files"]}
    assert yanked["beta-1.0-py3-none-any.whl"] == "bad build"


async def test_stale_page_is_served_with_its_age_when_upstream_fails(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(index_ttl=0)
    fresh = await gate.get("/simple/alpha/")
    upstream.page_status = 503
    resp = await gate.get("/simple/alpha/")
    assert resp.status == 200
    assert resp.headers["X-Pipgate-Cache"] == "stale"
    assert resp.headers["X-Pipgate-Stale"].startswith("age=")
    assert await resp.read() == await fresh.read()


async def test_page_older_than_max_stale_is_not_served(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(index_ttl=0, max_stale=0)
    await gate.get("/simple/alpha/")
    upstream.page_status = 503
    resp = await gate.get("/simple/alpha/")
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "http_5xx"


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [("page_status_500", 503, "http_5xx"), ("garbage", 502, "bad_page"), ("down", 503, None)],
)
async def test_upstream_failure_without_cache_is_a_clear_error(
    gate: TestClient, upstream: FakePyPI, fault: str, status: int, reason: str | None
) -> None:
    if fault == "page_status_500":
        upstream.page_status = 500
    elif fault == "garbage":
        upstream.garbage_pages.add("alpha")
    else:
        upstream.down = True
    resp = await gate.get("/simple/alpha/")
    assert resp.status == status
    text = await resp.text()
    assert text.startswith("pipgate: upstream fetch failed")
    assert "Traceback" not in text
    if reason:
        assert resp.headers["X-Pipgate-Reason"] == reason


async def test_independent_parser_sees_same_files_as_upstream(
    gate: TestClient, upstream: FakePyPI
) -> None:
    async with gate.session.get(f"{upstream.index_url}delta/", headers={"Accept": JSON}) as r:
        upstream_page = IndependentPage.from_json_data(await r.json(content_type=None), str(r.url))
    for accept in ("text/html", JSON):
        resp = await gate.get("/simple/delta/", headers={"Accept": accept})
        body = await resp.text()
        if accept == JSON:
            ours = IndependentPage.from_json_data(json.loads(body), base_url=str(resp.url))
        else:
            ours = IndependentPage.from_html("delta", body, base_url=str(resp.url))
        assert [p.filename for p in ours.packages] == [p.filename for p in upstream_page.packages]
        for mine, theirs in zip(ours.packages, upstream_page.packages, strict=True):
            assert mine.digests == theirs.digests
            assert mine.requires_python == theirs.requires_python
            assert mine.is_yanked == theirs.is_yanked
            assert mine.has_metadata == theirs.has_metadata
            assert mine.url.startswith(str(gate.make_url("/files/delta/")))


async def test_html_output_escapes_requires_python_and_never_writes_bare_yanked(
    gate: TestClient,
) -> None:
    delta = await (await gate.get("/simple/delta/", headers={"Accept": "text/html"})).text()
    assert 'data-requires-python="&gt;=3.8, &lt;4"' in delta
    beta = await (await gate.get("/simple/beta/", headers={"Accept": "text/html"})).text()
    assert 'data-yanked="broken release"' in beta


async def test_quarantined_project_offers_no_files_even_cached_ones(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(index_ttl=0)
    page = json.loads(await (await gate.get("/simple/beta/", headers={"Accept": JSON})).read())
    file_url = gate.make_url("/simple/beta/").join(URL(page["files"][0]["url"]))
    assert (await gate.get(file_url.path)).status == 200
    upstream.set_status("beta", "quarantined", "malware report")
    page = json.loads(await (await gate.get("/simple/beta/", headers={"Accept": JSON})).read())
    assert page["files"] == []
    assert page["project-status"]["status"] == "quarantined"
    assert (await gate.get(file_url.path)).status == 404


async def test_root_list_is_streamed_gzipped_and_in_both_formats(gate: TestClient) -> None:
    packed = await gate.get("/simple/", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert packed.headers["Content-Encoding"] == "gzip"
    html = gzip.decompress(await packed.read()).decode()
    assert '<a href="zope-interface/">Zope.Interface</a>' in html
    as_json = await gate.get("/simple/", headers={"Accept": JSON})
    assert as_json.headers["Content-Type"] == JSON
    names = {p["name"] for p in json.loads(await as_json.read())["projects"]}
    assert names == {"alpha", "beta", "gamma", "delta", "Zope.Interface"}
    etag = as_json.headers["ETag"]
    again = await gate.get("/simple/", headers={"Accept": JSON, "If-None-Match": etag})
    assert again.status == 304


async def test_quarantine_applies_at_once_to_files_served_from_cache(
    make_gate: GateFactory, upstream: FakePyPI
) -> None:
    gate = await make_gate(index_ttl=0)
    page = json.loads(await (await gate.get("/simple/beta/", headers={"Accept": JSON})).read())
    file_url = gate.make_url("/simple/beta/").join(URL(page["files"][0]["url"]))
    for expected in ("miss", "hit", "hit"):  # the later hits are remembered in memory
        resp = await gate.get(file_url.path)
        assert resp.headers["X-Pipgate-Cache"] == expected
        await resp.read()
    upstream.set_status("beta", "quarantined")
    await gate.get("/simple/beta/")
    assert (await gate.get(file_url.path)).status == 404
