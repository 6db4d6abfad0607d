"""Malformed requests get a short 4xx answer: never a 500, never a traceback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from tests.support.fake_pypi import FakePyPI


async def raw_get(gate: TestClient, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side path normalisation)."""
    assert gate.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.server.port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


BAD_TARGETS = [
    "/simple/../simple/alpha/",
    "/simple/%2e%2e/",
    "/simple/%2e%2e/%2e%2e/etc/passwd",
    "/simple/..%2F..%2Fetc/",
    "/simple/a%2Fb/",
    "/simple/a%00b/",
    "/simple/%00/",
    "/simple/" + "a" * 5000 + "/",
    "/simple/-leading-dash/",
    "/simple/alpha/extra/",
    "/simple/%ff%fe/",
    "/files/alpha/not-a-key/alpha-1.0-py3-none-any.whl",
    "/files/alpha/" + "0" * 64 + "/..%2F..%2Fetc%2Fpasswd",
    "/files/alpha/" + "0" * 64 + "/.metadata",
    "/files/Alpha/" + "0" * 64 + "/alpha-1.0-py3-none-any.whl",
    "/files/%00/x/y",
    "/nothing-here",
]
#: Well-formed but wrong: answered 404 after looking at the (real) project page.
UNKNOWN_TARGETS = ["/files/alpha/" + "0" * 64 + "/alpha-1.0-py3-none-any.whl"]


@pytest.mark.parametrize("target", BAD_TARGETS + UNKNOWN_TARGETS)
async def test_malformed_paths_get_a_short_4xx(gate: TestClient, target: str) -> None:
    status, body = await raw_get(gate, target)
    assert 400 <= status < 500, (status, body[:200])
    assert len(body) < 500
    assert b"Traceback" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_unsupported_methods_get_405(gate: TestClient, method: str) -> None:
    status, body = await raw_get(gate, "/simple/alpha/", method=method)
    assert status == 405
    assert b"Traceback" not in body


@pytest.mark.parametrize(
    "accept",
    [
        "",
        ";;;",
        "application/vnd.pypi.simple.v1+json;q=abc",
        "*/*;q=2",
        "x" * 4000,
        "text/html;q=0.5;q=0.9,,,",
    ],
)
async def test_garbage_accept_headers_still_get_a_page(gate: TestClient, accept: str) -> None:
    resp = await gate.get("/simple/alpha/", headers={"Accept": accept})
    assert resp.status == 200


async def test_malformed_input_never_reaches_upstream(gate: TestClient, upstream: FakePyPI) -> None:
    for target in BAD_TARGETS:
        await raw_get(gate, target)
    assert upstream.requests == []


@pytest.mark.parametrize("query", ["format=%00", "x=%0d%0aSet-Cookie:%20a", "a=%ff"])
async def test_redirect_keeps_an_encoded_query_encoded(gate: TestClient, query: str) -> None:
    """``/simple?…`` redirects with the query as it came: decoded, a %00 or CR LF would
    be a control character in the Location header (hypothesis found it)."""
    resp = await gate.get(f"/simple?{query}", allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"].lower() == f"simple/?{query}".lower()
