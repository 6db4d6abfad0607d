"""Rewritten links (relative, public_url, X-Forwarded-*) and credentials kept out of sight."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipgate.app import create_app
from tests.conftest import GateFactory, gate_config
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import sample_tree
from tests.support.server import PipgateProcess

JSON = "application/vnd.pypi.simple.v1+json"
ALPHA = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")


async def first_url(gate: TestClient, headers: dict[str, str] | None = None) -> str:
    resp = await gate.get("/simple/alpha/", headers={"Accept": JSON, **(headers or {})})
    return str(json.loads(await resp.read())["files"][0]["url"])


async def test_links_are_relative_by_default(gate: TestClient) -> None:
    assert await first_url(gate) == f"../../files/alpha/{ALPHA.sha256}/{ALPHA.filename}"


async def test_public_url_makes_absolute_links(make_gate: GateFactory) -> None:
    gate = await make_gate(public_url="https://pypi.corp.example/mirror/")
    assert await first_url(gate) == (
        f"https://pypi.corp.example/mirror/files/alpha/{ALPHA.sha256}/{ALPHA.filename}"
    )


async def test_forwarded_headers_are_used_only_when_trusted(make_gate: GateFactory) -> None:
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pypi.corp.example",
        "X-Forwarded-Prefix": "/py",
    }
    untrusted = await make_gate()
    assert (await first_url(untrusted, forwarded)).startswith("../../files/")
    trusted = await make_gate(trust_forwarded=True)
    assert (await first_url(trusted, forwarded)).startswith(
        "https://pypi.corp.example/py/files/alpha/"
    )
    plain = await trusted.get("/simple/alpha/", headers={"Accept": JSON})
    other = await trusted.get("/simple/alpha/", headers={"Accept": JSON, **forwarded})
    assert plain.headers["ETag"] != other.headers["ETag"]


@pytest.mark.parametrize(
    "prefix",
    [".evil.example", "@evil.example", ":8080@evil.example", "//evil.example", "/a/../b", "/a?b"],
)
async def test_a_forwarded_prefix_is_a_path_and_never_extends_the_host(
    make_gate: GateFactory, prefix: str
) -> None:
    gate = await make_gate(trust_forwarded=True)
    forwarded = {"X-Forwarded-Host": "pypi.corp.example", "X-Forwarded-Prefix": prefix}
    url = await first_url(gate, forwarded)
    # Not a path: ignored, and the links stay relative (never http://pypi.corp.example.evil…).
    assert url.startswith("../../files/"), url


async def test_pages_with_forwarded_links_vary_on_the_forwarded_headers(
    make_gate: GateFactory,
) -> None:
    forwarded = {"X-Forwarded-Host": "pypi.corp.example", "X-Forwarded-Prefix": "/py"}
    trusted = await make_gate(trust_forwarded=True)
    resp = await trusted.get("/simple/alpha/", headers={"Accept": JSON, **forwarded})
    vary = {v.strip() for v in resp.headers["Vary"].split(",")}
    assert {"X-Forwarded-Host", "X-Forwarded-Prefix", "X-Forwarded-Proto", "Accept"} <= vary
    fixed = await make_gate(public_url="https://pypi.corp.example/")
    resp = await fixed.get("/simple/alpha/", headers={"Accept": JSON})
    assert "X-Forwarded-Host" not in resp.headers["Vary"]


async def test_pages_from_html_and_json_upstreams_agree(
    aiohttp_client: Any, any_upstream: FakePyPI, tmp_path: Path
) -> None:
    gate = await aiohttp_client(create_app(gate_config(tmp_path / "c", any_upstream)))
    page = json.loads(await (await gate.get("/simple/beta/", headers={"Accept": JSON})).read())
    by_name = {f["filename"]: f for f in page["files"]}
    assert by_name["beta-2.0-py3-none-any.whl"]["yanked"] == "broken release"
    assert by_name["beta-1.0-py3-none-any.whl"]["yanked"] is False
    if any_upstream.page_format == "json":
        assert page["meta"]["api-version"] == "1.1"
        assert set(page["versions"]) == {"1.0", "2.0"}
        assert {f["upload-time"] for f in page["files"]} == {"2024-01-02T03:04:05.000000Z"}
    else:
        # PEP 700: HTML carries no sizes, so pipgate cannot honestly claim API 1.1.
        assert page["meta"]["api-version"] == "1.0"
    for entry in page["files"]:
        assert "dist-info-metadata" not in entry


def test_upstream_credentials_never_reach_logs_or_error_bodies(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    secret = "s3cr3t-Pa55"
    index = upstream.index_url.replace("http://", f"http://builder:{secret}@")
    with PipgateProcess(upstream=index, cache_dir=tmp_path / "cache") as gate:
        ok = urllib.request.urlopen(gate.index_url + "alpha/", timeout=10)
        assert ok.status == 200
        upstream.page_status = 500
        bodies = []
        for path in ("beta/", "gamma/", ""):
            try:
                urllib.request.urlopen(gate.index_url + path + "?x", timeout=30)
            except urllib.error.HTTPError as exc:
                bodies.append(exc.read().decode())
        metrics = urllib.request.urlopen(gate.url + "/metrics", timeout=10).read().decode()
        ready = urllib.request.urlopen(gate.url + "/readyz", timeout=10).read().decode()
        landing = urllib.request.urlopen(gate.url + "/", timeout=10).read().decode()
    assert bodies, "the failing upstream should have produced error bodies"
    for text in (gate.log(), metrics, ready, landing, *bodies):
        assert secret not in text
    assert "builder:" not in gate.log()
    # The upstream really received the credentials (so they were in use, not dropped).
    assert any(
        h.get("authorization", "").startswith("Basic ") for _, _, h in upstream.requests
    )


@pytest.mark.parametrize("fmt", ["html", "json"])
async def test_large_root_list_round_trips_sorted_by_normalised_name(
    aiohttp_client: Any, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small sort runs, so the external merge of several runs is exercised too.
    monkeypatch.setattr("pipgate.pages.names_file.RUN_LENGTH", 3000)
    fake = FakePyPI(page_format=fmt)  # type: ignore[arg-type]
    names = [f"Project_{i}.Name" for i in range(20000)]
    # Spellings of names already listed are one project, listed once (first spelling).
    fake.root_names = [*names, "project-7-name", "PROJECT_19999_NAME"]
    names.sort(key=lambda n: n.lower().replace("_", "-").replace(".", "-"))
    fake.start()
    try:
        gate = await aiohttp_client(create_app(gate_config(tmp_path / "c", fake)))
        resp = await gate.get("/simple/", headers={"Accept": JSON})
        listed = [p["name"] for p in json.loads(await resp.read())["projects"]]
        assert listed == names
    finally:
        fake.stop()
