"""Warm project pages answered before routing (:mod:`pipgate.web.hot_path`): the same
answer as the application's, counted and logged the same, and never for a request the
application must see (a gate, a revalidation, an unnormalised name, a query)."""

from __future__ import annotations

import asyncio
import gzip
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pipgate.web import hot_path
from tests.conftest import GateFactory
from tests.support.fake_pypi import FakePyPI
from tests.support.metrics import metric_value
from tests.support.server import PipgateProcess

JSON = "application/vnd.pypi.simple.v1+json"
#: Headers that differ between any two answers.
PER_REQUEST = {"date", "x-request-id"}


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the hot path answered (it declines by returning ``None``)."""
    paths: list[str] = []
    real = hot_path._answer

    def spy(request: web.BaseRequest, svc: Any) -> web.Response | None:
        answer = real(request, svc)
        if answer is not None:
            paths.append(request.path_qs)
        return answer

    monkeypatch.setattr(hot_path, "_answer", spy)
    return paths


async def fetch(gate: TestClient, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and the body as sent."""
    resp = await gate.get(path, headers=headers, auto_decompress=False)
    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [(JSON, "gzip"), (JSON, "identity"), ("text/html", "gzip"), ("text/html", "identity")],
)
async def test_a_warm_page_from_the_hot_path_is_the_applications_answer(
    gate: TestClient, answered: list[str], accept: str, encoding: str
) -> None:
    headers = {"Accept": accept, "Accept-Encoding": encoding, "User-Agent": "pip/24.0"}
    first = await fetch(gate, "/simple/alpha/", **headers)  # cold: the application
    assert first[0] == 200 and answered == []
    hot = await fetch(gate, "/simple/alpha/", **headers)
    assert answered == ["/simple/alpha/"]
    # A query the page ignores sends the same request through the router.
    routed = await fetch(gate, "/simple/alpha/?via=router", **headers)
    assert answered == ["/simple/alpha/"]
    assert hot[0] == routed[0] == 200
    assert hot[2] == routed[2]
    assert hot[1]["x-pipgate-cache"] == "hit"
    drop = PER_REQUEST | {"age"}  # a second may pass between the two
    assert {k: v for k, v in hot[1].items() if k not in drop} == {
        k: v for k, v in routed[1].items() if k not in drop
    }
    assert hot[1]["x-request-id"]
    gzipped = hot[1].get("content-encoding") == "gzip"
    assert not gzipped or encoding == "gzip"
    assert b"alpha" in (gzip.decompress(hot[2]) if gzipped else hot[2])


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request ids of the answers the hot path wrote itself (not aiohttp's)."""
    ids: list[str] = []
    real = hot_path._written

    def spy(entry: Any, now: float, rid: str) -> web.StreamResponse:
        ids.append(rid)
        return real(entry, now, rid)

    monkeypatch.setattr(hot_path, "_written", spy)
    return ids


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP/1.1 answer off a raw connection: status line, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        assert name.lower() not in headers, f"{name} sent twice"
        headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, body


async def test_pipelined_warm_pages_are_written_whole_and_in_order(
    gate: TestClient, answered: list[str], written: list[str]
) -> None:
    plain = {"Accept": JSON, "Accept-Encoding": "identity"}  # as the raw requests below
    await fetch(gate, "/simple/alpha/", **plain)  # cold; the memo holds it from here
    routed = await fetch(gate, "/simple/alpha/?via=router", **plain)
    reader, writer = await asyncio.open_connection(gate.host, gate.port)
    try:
        one = b"GET /simple/alpha/ HTTP/1.1\r\nHost: x\r\nAccept: " + JSON.encode()
        writer.write(one + b"\r\nX-Request-ID: first\r\n\r\n" + one + b"\r\n\r\n")
        first = await read_answer(reader)
        second = await read_answer(reader)
    finally:
        writer.close()
    assert written == ["first", second[1]["x-request-id"]]
    assert first[0] == second[0] == b"HTTP/1.1 200 OK"
    assert first[2] == second[2] == routed[2]
    assert first[1]["x-request-id"] == "first" != second[1]["x-request-id"]
    drop = PER_REQUEST | {"age"}
    assert {k: v for k, v in first[1].items() if k not in drop} == {
        k: v for k, v in routed[1].items() if k not in drop
    }
    assert "connection" not in first[1]  # HTTP/1.1 stays open by default
    assert first[1]["date"].endswith(" GMT")


@pytest.mark.parametrize(
    "request_line",
    [b"GET /simple/alpha/ HTTP/1.0\r\n", b"GET /simple/alpha/ HTTP/1.1\r\nConnection: close\r\n"],
)
async def test_a_closing_connection_gets_aiohttps_answer_from_the_memo(
    gate: TestClient, answered: list[str], written: list[str], request_line: bytes
) -> None:
    plain = {"Accept": JSON, "Accept-Encoding": "identity"}
    await fetch(gate, "/simple/alpha/", **plain)
    routed = await fetch(gate, "/simple/alpha/?via=router", **plain)
    reader, writer = await asyncio.open_connection(gate.host, gate.port)
    try:
        writer.write(request_line + b"Host: x\r\nAccept: " + JSON.encode() + b"\r\n\r\n")
        status, headers, body = await read_answer(reader)
        rest = await asyncio.wait_for(reader.read(), 10)  # the server closes
    finally:
        writer.close()
    assert status.endswith(b" 200 OK") and body == routed[2] and rest == b""
    assert headers["x-pipgate-cache"] == "hit" and headers["x-request-id"]
    assert answered == ["/simple/alpha/"] and written == []  # aiohttp's Response


def test_a_header_that_cannot_be_sent_as_it_is_leaves_the_answer_to_aiohttp() -> None:
    assert hot_path.wire_head({"ETag": '"a"'}, 3).startswith(b"HTTP/1.1 200 OK\r\nETag: \"a\"")
    assert hot_path.wire_head({"X-Bad": "a\r\nSet-Cookie: b"}, 3) == b""


async def test_the_hot_path_answers_conditional_requests_as_the_application(
    gate: TestClient, answered: list[str]
) -> None:
    status, headers, _ = await fetch(gate, "/simple/alpha/", Accept=JSON)
    assert status == 200
    etag = {"If-None-Match": headers["etag"]}
    hot = await fetch(gate, "/simple/alpha/", Accept=JSON, **etag)
    routed = await fetch(gate, "/simple/alpha/?via=router", Accept=JSON, **etag)
    assert answered == ["/simple/alpha/"]
    assert hot[0] == routed[0] == 304
    assert hot[2] == routed[2] == b""
    assert "content-type" not in hot[1]
    assert hot[1]["etag"] == routed[1]["etag"] == headers["etag"]


async def test_hot_answers_are_counted_and_named_like_any_request(
    gate: TestClient, answered: list[str]
) -> None:
    async def counts() -> tuple[float, float]:
        text = await (await gate.get("/metrics")).text()
        requests = metric_value(
            text, "pipgate_http_requests_total", route="simple_project", status="200"
        )
        hits = metric_value(text, "pipgate_cache_requests_total", kind="page", result="hit")
        return requests, hits

    await fetch(gate, "/simple/alpha/", Accept=JSON)
    before = await counts()
    for _ in range(3):
        await fetch(gate, "/simple/alpha/", Accept=JSON)
    named = {"X-Request-ID": "ci-42"}
    status, headers, _ = await fetch(gate, "/simple/alpha/", Accept=JSON, **named)
    after = await counts()
    assert len(answered) == 4
    assert status == 200
    assert headers["x-request-id"] == "ci-42"
    assert after[0] - before[0] == 4
    assert after[1] - before[1] == 4


@pytest.mark.parametrize(
    ("path", "headers", "status", "cache"),
    [
        ("/simple/Alpha/", {}, 301, None),
        ("/simple/alpha/", {"Cache-Control": "no-cache"}, 200, "revalidated"),
        ("/simple/alpha/", {"Pragma": "no-cache"}, 200, "revalidated"),
        ("/simple/alpha/?format=text/html", {}, 200, "hit"),
    ],
)
async def test_requests_the_application_must_decide_go_through_it(
    gate: TestClient,
    answered: list[str],
    path: str,
    headers: dict[str, str],
    status: int,
    cache: str | None,
) -> None:
    await fetch(gate, "/simple/alpha/", Accept=JSON)
    resp = await gate.get(path, headers={"Accept": JSON, **headers}, allow_redirects=False)
    assert resp.status == status
    assert resp.headers.get("X-Pipgate-Cache") == cache
    assert answered == []


async def test_a_gated_server_never_answers_from_the_hot_path(
    make_gate: GateFactory, tmp_path: Path, answered: list[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("bot:tok_hotpath0123456789abcd\n")
    gate = await make_gate(read_tokens=tokens)
    auth = {"Authorization": "Bearer tok_hotpath0123456789abcd"}
    for _ in range(2):
        assert (await gate.get("/simple/alpha/", headers={"Accept": JSON, **auth})).status == 200
    refused = await gate.get("/simple/alpha/", headers={"Accept": JSON})
    assert refused.status == 401
    assert answered == []


def test_serve_answers_warm_pages_with_a_request_id_and_counts_them(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    with PipgateProcess(upstream=upstream.index_url, cache_dir=tmp_path / "cache") as gate:

        def get(path: str) -> tuple[int, dict[str, str]]:
            request = urllib.request.Request(gate.url + path, headers={"Accept": JSON})
            with urllib.request.urlopen(request, timeout=10) as resp:
                resp.read()
                return resp.status, dict(resp.headers)

        get("/simple/alpha/")
        text = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
        before = metric_value(text, "pipgate_http_requests_total", route="simple_project")
        status, headers = get("/simple/alpha/")
        assert status == 200
        assert headers["X-Pipgate-Cache"] == "hit"
        assert headers["X-Request-ID"]
        text = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
        assert metric_value(text, "pipgate_http_requests_total", route="simple_project") == (
            before + 1
        )
