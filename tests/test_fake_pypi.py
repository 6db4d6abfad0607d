"""The test upstream itself must be right, or every proxy test proves nothing.

These check that built distributions really install with pip and uv (offline), and that
FakePyPI speaks the simple API, ranges, validators and faults as the specs describe.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uv
from aiohttp.test_utils import TestClient

from tests.support.fake_pypi import (
    GARBAGE,
    JSON_TYPE,
    FakePyPI,
    PageFormat,
    Unsatisfiable,
    parse_range,
    wants_json,
)
from tests.support.packages import (
    BuiltDist,
    build_sdist,
    build_wheel,
    record_hash,
    sample_tree,
    wheel_metadata,
)

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1,"
    " text/html; q=0.01"
)
SAMPLE_INSTALL = {"alpha-1.0", "beta-1.0", "delta-3.0", "gamma-0.5"}


def client_env() -> dict[str, str]:
    """This machine sets PIP_FIND_LINKS etc.; clients must see only the fake index."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "UV_")) and not k.lower().endswith("_proxy")
    }


def run_client(args: list[str]) -> None:
    """Run pip/uv; on failure show its output, which is what explains the failure."""
    proc = subprocess.run(args, env=client_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"


def pip_install(target: Path, *args: str) -> None:
    run_client(
        [
            *(sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--quiet"),
            *("--disable-pip-version-check", "--target", str(target), *args),
        ]
    )


def uv_install(target: Path, cache: Path, index_url: str, *reqs: str) -> None:
    run_client(
        [
            *(uv.find_uv_bin(), "pip", "install", "--no-config", "--python", sys.executable),
            *("--cache-dir", str(cache), "--index-url", index_url, "--target", str(target)),
            *reqs,
        ]
    )


def installed(target: Path) -> set[str]:
    """``name-version`` of every dist-info in a --target directory."""
    return {p.name.removesuffix(".dist-info") for p in target.glob("*.dist-info")}


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Blocking GET without proxies; HTTP errors are returned, not raised."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def write(directory: Path, dist: BuiltDist) -> Path:
    path = directory / dist.filename
    path.write_bytes(dist.data)
    return path


# -- packages.py ----------------------------------------------------------------------


def test_builds_are_deterministic() -> None:
    """Same inputs, same bytes: hashes in tests and caches stay stable across runs."""
    assert sample_tree() == sample_tree()
    assert build_wheel("x", "1", pad_to=200_000) == build_wheel("x", "1", pad_to=200_000)


def test_wheel_record_and_metadata_are_correct() -> None:
    """RECORD must hash every file (pip checks it) and METADATA is what PEP 658 serves."""
    dist = build_wheel("Zope.Interface", "5.0", requires=["beta>=1"], requires_python=">=3.8, <4")
    assert dist.filename == "zope_interface-5.0-py3-none-any.whl"
    assert dist.project == "zope-interface"
    assert dist.metadata == wheel_metadata(dist.data)
    assert dist.metadata is not None
    assert b"Requires-Dist: beta>=1\n" in dist.metadata
    assert b"Requires-Python: >=3.8, <4\n" in dist.metadata
    with zipfile.ZipFile(io.BytesIO(dist.data)) as zf:
        record = zf.read("zope_interface-5.0.dist-info/RECORD").decode().splitlines()
        rows = dict(line.split(",", 1) for line in record)
        assert rows.pop("zope_interface-5.0.dist-info/RECORD") == ","
        assert set(rows) == set(zf.namelist()) - {"zope_interface-5.0.dist-info/RECORD"}
        for path, row in rows.items():
            data = zf.read(path)
            assert row == f"{record_hash(data)},{len(data)}"


def test_pad_to_makes_a_big_stored_wheel() -> None:
    dist = build_wheel("big", "1.0", pad_to=3_000_000)
    assert 3_000_000 <= dist.size < 3_010_000
    with zipfile.ZipFile(io.BytesIO(dist.data)) as zf:
        assert zf.getinfo("big/_padding.bin").compress_type == zipfile.ZIP_STORED


def test_sdist_layout() -> None:
    dist = build_sdist("gamma", "0.5", requires=["beta"])
    assert dist.filename == "gamma-0.5.tar.gz"
    assert dist.metadata is None and dist.metadata_sha256 is None
    with tarfile.open(fileobj=io.BytesIO(dist.data)) as tf:
        names = set(tf.getnames())
        pkg_info = tf.extractfile("gamma-0.5/PKG-INFO")
        assert pkg_info is not None and b"Requires-Dist: beta\n" in pkg_info.read()
    assert names == {
        "gamma-0.5/PKG-INFO",
        "gamma-0.5/pyproject.toml",
        "gamma-0.5/backend.py",
        "gamma-0.5/gamma/__init__.py",
    }


@pytest.mark.clients
def test_wheel_and_sdist_install_with_pip_offline(tmp_path: Path) -> None:
    """The sdist's in-tree backend builds with no index at all (no setuptools needed)."""
    wheel = build_wheel("Zope.Interface", "5.0", extra_files={"zope_interface/data.txt": b"x"})
    sdist = build_sdist("gamma", "0.5", requires_python=">=3.8")
    target = tmp_path / "target"
    pip_install(target, "--no-index", str(write(tmp_path, wheel)), str(write(tmp_path, sdist)))
    assert installed(target) == {"zope_interface-5.0", "gamma-0.5"}
    assert (target / "zope_interface" / "data.txt").read_bytes() == b"x"
    check = "import gamma, zope_interface; print(gamma.__version__, zope_interface.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", check],
        env={**client_env(), "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split() == ["0.5", "5.0"]
    assert b"Requires-Python: >=3.8" in (target / "gamma-0.5.dist-info" / "METADATA").read_bytes()


@pytest.mark.clients
@pytest.mark.parametrize("page_format", ["json", "html"])
def test_uv_installs_sample_tree_from_fake_index(tmp_path: Path, page_format: PageFormat) -> None:
    """Yanked beta 2.0 and delta 4.0 (Requires-Python >=4) are skipped; gamma is built."""
    with FakePyPI.with_sample_tree(page_format=page_format) as up:
        uv_install(tmp_path / "target", tmp_path / "cache", up.index_url, "alpha")
        assert installed(tmp_path / "target") == SAMPLE_INSTALL
        assert up.downloads("beta-2.0-py3-none-any.whl") == 0
        assert up.downloads("delta-4.0-py3-none-any.whl") == 0
        assert up.downloads("gamma-0.5.tar.gz") == 1
        # uv took alpha's dependencies from the PEP 658 file, not from the wheel.
        alpha = next(d for d in sample_tree() if d.filename.startswith("alpha"))
        assert up.count(up.file_path(alpha) + ".metadata") == 1


@pytest.mark.clients
def test_pip_installs_sample_tree_with_negotiated_pages(tmp_path: Path) -> None:
    with FakePyPI.with_sample_tree(page_format="negotiate") as up:
        pip_install(tmp_path / "target", "--index-url", up.index_url, "alpha")
        assert installed(tmp_path / "target") == SAMPLE_INSTALL
        assert up.downloads("beta-2.0-py3-none-any.whl") == 0
        accept = up.headers_for("/simple/alpha/")[0]["accept"]
        assert wants_json(accept)


# -- pages ----------------------------------------------------------------------------


async def test_json_project_page(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI.with_sample_tree()
    client = await aiohttp_client(up.app())
    resp = await client.get("/simple/delta/")
    assert resp.status == 200
    assert resp.content_type == JSON_TYPE
    page = await resp.json(content_type=None)
    assert page["meta"]["api-version"] == "1.1"
    assert page["name"] == "delta" and page["versions"] == ["3.0", "4.0"]
    first = page["files"][0]
    dist = build_wheel("delta", "3.0", requires_python=">=3.8, <4")
    assert first["filename"] == dist.filename
    assert first["url"] == str(client.make_url(up.file_path(dist)))
    assert first["hashes"] == {"sha256": dist.sha256}
    assert first["requires-python"] == ">=3.8, <4"
    assert first["core-metadata"] == {"sha256": dist.metadata_sha256}
    assert first["data-dist-info-metadata"] == first["core-metadata"]
    assert "dist-info-metadata" not in first  # PEP 714: crashes pip 22.3-23.1
    assert first["size"] == dist.size and first["yanked"] is False
    assert first["provenance"].startswith("https://")


async def test_html_project_page_escapes_and_marks_yanked(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI(page_format="html")
    delta = build_wheel("delta", "3.0", requires_python=">=3.8, <4")
    up.add(delta, yanked="bad <build>")
    up.add(build_wheel("delta", "2.0"), yanked=True, metadata=False)
    client = await aiohttp_client(up.app())
    resp = await client.get("/simple/delta/")
    assert resp.content_type == "text/html"
    body = await resp.text()
    assert body.startswith("<!DOCTYPE html>")
    assert '<meta name="pypi:repository-version" content="1.1">' in body
    assert f'#sha256={delta.sha256}"' in body
    assert 'data-requires-python="&gt;=3.8, &lt;4"' in body
    assert 'data-yanked="bad &lt;build&gt;"' in body
    assert 'data-yanked=""' in body  # a bare attribute would read as "not yanked" in pip
    assert f'data-core-metadata="sha256={delta.metadata_sha256}"' in body
    assert f'data-dist-info-metadata="sha256={delta.metadata_sha256}"' in body
    assert body.count("data-core-metadata") == 1
    assert 'data-provenance="https://pypi.org/integrity/delta/3.0/' in body


async def test_root_lists_display_names(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakePyPI.with_sample_tree(page_format="negotiate").app())
    resp = await client.get("/simple/", headers={"Accept": JSON_TYPE})
    names = [p["name"] for p in (await resp.json(content_type=None))["projects"]]
    assert "Zope.Interface" in names
    resp = await client.get("/simple/", headers={"Accept": "text/html"})
    assert '<a href="/simple/zope-interface/">Zope.Interface</a>' in await resp.text()


async def test_names_redirect_and_unknown_is_404(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakePyPI.with_sample_tree().app())
    resp = await client.get("/simple/Zope_Interface/", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/simple/zope-interface/"
    resp = await client.get("/simple/zope-interface", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/simple/zope-interface/"
    assert (await client.get("/simple/nope/")).status == 404


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, True),
        ("application/vnd.pypi.simple.v1+json, text/html;q=0.01", True),
        ("application/vnd.pypi.simple.latest+json", True),
        ("application/vnd.pypi.simple.v1+json;q=0", False),
        ("text/html", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_negotiation(accept: str | None, expected: bool) -> None:
    assert wants_json(accept) is expected


async def test_negotiated_pages_vary_on_accept(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(FakePyPI.with_sample_tree(page_format="negotiate").app())
    as_json = await client.get("/simple/beta/", headers={"Accept": PIP_ACCEPT})
    as_html = await client.get("/simple/beta/", headers={"Accept": "text/html"})
    assert as_json.content_type == JSON_TYPE and as_html.content_type == "text/html"
    assert as_json.headers["Vary"] == as_html.headers["Vary"] == "Accept"
    assert as_json.headers["ETag"] != as_html.headers["ETag"]


async def test_validators_give_304(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI.with_sample_tree()
    client = await aiohttp_client(up.app())
    first = await client.get("/simple/alpha/")
    etag = first.headers["ETag"]
    assert etag.startswith('"') and "Last-Modified" in first.headers
    again = await client.get("/simple/alpha/", headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    up.add(build_wheel("alpha", "1.1"))  # the page changed: the old ETag no longer matches
    assert (await client.get("/simple/alpha/", headers={"If-None-Match": etag})).status == 200
    up.validators = False
    plain = await client.get("/simple/alpha/", headers={"If-None-Match": etag})
    assert plain.status == 200
    assert "ETag" not in plain.headers and "Last-Modified" not in plain.headers


async def test_quarantined_project_offers_nothing(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI.with_sample_tree(page_format="negotiate")
    up.set_status("Beta", "quarantined", "malware")
    client = await aiohttp_client(up.app())
    page = await (await client.get("/simple/beta/", headers={"Accept": JSON_TYPE})).json(
        content_type=None
    )
    assert page["meta"]["api-version"] == "1.4"
    assert page["project-status"] == {"status": "quarantined", "reason": "malware"}
    assert page["files"] == []
    text = await (await client.get("/simple/beta/", headers={"Accept": "text/html"})).text()
    assert '<meta name="pypi:project-status" content="quarantined">' in text
    assert '<meta name="pypi:repository-version" content="1.4">' in text
    beta = build_wheel("beta", "1.0")
    assert (await client.get(up.file_path(beta))).status == 404


# -- files ----------------------------------------------------------------------------


async def test_metadata_file_is_the_wheels_metadata(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI.with_sample_tree()
    client = await aiohttp_client(up.app())
    page = await (await client.get("/simple/alpha/")).json(content_type=None)
    (entry,) = page["files"]
    wheel = await (await client.session.get(entry["url"])).read()
    meta = await (await client.session.get(entry["url"] + ".metadata")).read()
    assert hashlib.sha256(wheel).hexdigest() == entry["hashes"]["sha256"]
    assert meta == wheel_metadata(wheel)
    assert hashlib.sha256(meta).hexdigest() == entry["core-metadata"]["sha256"]


async def test_metadata_not_served_when_not_advertised(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI()
    dist = build_wheel("beta", "1.0")
    up.add(dist, metadata=False)
    client = await aiohttp_client(up.app())
    page = await (await client.get("/simple/beta/")).json(content_type=None)
    assert page["files"][0]["core-metadata"] is False
    assert (await client.get(up.file_path(dist) + ".metadata")).status == 404
    assert (await client.get(up.file_path(dist))).status == 200
    assert (await client.get(up.file_path(dist).replace("/packages/", "/packages/x"))).status == 404


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=90-200", (90, 99)),
        ("bytes=99-99", (99, 99)),
        (None, None),
        ("bytes=5-1", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=abc", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


async def test_range_answers_are_exact(aiohttp_client: ClientFactory) -> None:
    dist = build_wheel("big", "1.0", pad_to=200_000)
    up = FakePyPI([dist])
    client = await aiohttp_client(up.app())
    path, size = up.file_path(dist), dist.size

    head = await client.head(path)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(size)
    assert head.headers["Accept-Ranges"] == "bytes"

    for header, start, end in [
        ("bytes=0-9", 0, 9),
        (f"bytes={size - 100}-", size - 100, size - 1),
        ("bytes=-22", size - 22, size - 1),
    ]:
        resp = await client.get(path, headers={"Range": header})
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert await resp.read() == dist.data[start : end + 1]

    resp = await client.get(path, headers={"Range": f"bytes={size}-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{size}"
    # pip's resume: If-Range with a stale validator means "send everything".
    resp = await client.get(path, headers={"Range": "bytes=10-", "If-Range": '"stale"'})
    assert resp.status == 200 and await resp.read() == dist.data
    etag = head.headers["ETag"]
    resp = await client.get(path, headers={"Range": "bytes=10-", "If-Range": etag})
    assert resp.status == 206 and await resp.read() == dist.data[10:]


# -- faults ---------------------------------------------------------------------------


async def test_corrupt_file_keeps_length_but_not_hash(aiohttp_client: ClientFactory) -> None:
    dist = build_wheel("beta", "1.0")
    up = FakePyPI([dist])
    up.corrupt.add(dist.filename)
    client = await aiohttp_client(up.app())
    body = await (await client.get(up.file_path(dist))).read()
    assert len(body) == dist.size
    assert hashlib.sha256(body).hexdigest() != dist.sha256


async def test_truncated_file_breaks_the_download(aiohttp_client: ClientFactory) -> None:
    dist = build_wheel("big", "1.0", pad_to=300_000)
    up = FakePyPI([dist])
    up.truncate[dist.filename] = 100_000
    client = await aiohttp_client(up.app())
    resp = await client.get(up.file_path(dist))
    assert resp.headers["Content-Length"] == str(dist.size)
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_page_faults(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI.with_sample_tree()
    client = await aiohttp_client(up.app())
    up.garbage_pages.add("Beta")
    resp = await client.get("/simple/beta/")
    assert resp.status == 200 and resp.content_type == JSON_TYPE
    assert await resp.read() == GARBAGE
    with pytest.raises(json.JSONDecodeError):
        json.loads(GARBAGE)
    up.page_status = 503
    assert (await client.get("/simple/alpha/")).status == 503
    assert (await client.get("/simple/")).status == 503
    up.page_status = None
    up.file_status = 500
    assert (await client.get(up.file_path(build_wheel("beta", "1.0")))).status == 500


def test_down_then_stopped_then_back_on_the_same_port() -> None:
    """The "upstream died after the cache was warm" scenario, step by step."""
    with FakePyPI.with_sample_tree() as up:
        assert fetch(up.index_url + "alpha/")[0] == 200
        up.down = True
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            fetch(up.index_url + "alpha/")
        up.down = False
        port = up.port
        up.stop()
        assert not up.running
        with pytest.raises(urllib.error.URLError) as refused:
            fetch(up.index_url + "alpha/")
        assert isinstance(refused.value.reason, ConnectionRefusedError)
        up.start(port=port)
        assert fetch(up.index_url + "alpha/")[0] == 200
        assert up.count("/simple/alpha/") == 3  # the refused attempt never arrived


def test_stop_cuts_a_slow_download_in_flight() -> None:
    """stop() must behave like a dying host, not wait for slow bodies to finish."""
    dist = build_wheel("big", "1.0", pad_to=1_000_000)
    with FakePyPI([dist]) as up:
        up.chunk_size, up.file_delay = 1024, 30.0
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(up.file_url(dist), timeout=10) as resp:
            assert resp.read(1024) == dist.data[:1024]  # first chunk arrived, then it stalls
            up.stop()
            with pytest.raises(http.client.IncompleteRead):
                resp.read()


async def test_requests_are_recorded(aiohttp_client: ClientFactory) -> None:
    up = FakePyPI.with_sample_tree()
    client = await aiohttp_client(up.app())
    await client.get("/simple/alpha/", headers={"Accept": PIP_ACCEPT})
    await client.get("/simple/beta/")
    beta = build_wheel("beta", "1.0")
    await client.get(up.file_path(beta) + ".metadata")
    await client.get(up.file_path(beta), headers={"Range": "bytes=0-1"})
    assert up.count("/simple/") == 2
    assert up.count("/simple/alpha/") == 1
    assert up.count("/packages/") == 2
    assert up.count(up.file_path(beta)) == 1
    assert up.downloads(beta.filename) == 1
    (alpha_headers,) = up.headers_for("/simple/alpha/")
    assert alpha_headers["accept"] == PIP_ACCEPT
    assert up.headers_for(up.file_path(beta))[0]["range"] == "bytes=0-1"
    up.clear_requests()
    assert up.count("/") == 0


def test_thread_server_serves_absolute_file_urls() -> None:
    with FakePyPI.with_sample_tree(page_format="html") as up:
        status, headers, body = fetch(up.index_url + "gamma/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        gamma = build_sdist("gamma", "0.5")
        assert f'href="{up.file_url(gamma)}#sha256={gamma.sha256}"' in body.decode()
        status, _, data = fetch(up.file_url(gamma))
        assert status == 200 and data == gamma.data
