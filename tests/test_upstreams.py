"""Several upstreams in one pipgate: dependency confusion, file hosts, redirects,
credentials in URLs, per-upstream proxies and hashes (fake upstreams over real HTTP)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipgate.app import create_app
from pipgate.config import Config, RouteConfig, load_config
from pipgate.simple.parse import parse_project_html
from pipgate.upstream.origins import OriginRule, keep_allowed_files
from tests.conftest import upstream_config
from tests.support.clients import installed, pip_install, uv_install
from tests.support.fake_pypi import FakePyPI
from tests.support.forward_proxy import ForwardProxy
from tests.support.links import JSON, file_path
from tests.support.metrics import metric_value
from tests.support.packages import BuiltDist, build_wheel, sample_tree
from tests.support.server import PipgateProcess
from tests.support.tls import PrivateCA

#: The internal package, and the public one that borrowed its name at a higher version.
CORP_INTERNAL = build_wheel("corp-tool", "1.0", extra_files={"corp_tool/origin.txt": b"internal"})
CORP_PUBLIC = build_wheel("corp-tool", "9.9", extra_files={"corp_tool/origin.txt": b"public"})
ALPHA = next(d for d in sample_tree() if d.filename.startswith("alpha-"))
BETA = next(d for d in sample_tree() if d.filename == "beta-1.0-py3-none-any.whl")


@pytest.fixture
def internal() -> Iterator[FakePyPI]:
    fake = FakePyPI([CORP_INTERNAL])
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def public() -> Iterator[FakePyPI]:
    fake = FakePyPI.with_sample_tree()
    fake.add(CORP_PUBLIC)
    fake.start()
    yield fake
    fake.stop()


def two_upstreams(cache: Path, internal: FakePyPI, public: FakePyPI, **overrides: Any) -> Config:
    config = Config(
        cache_dir=cache,
        upstreams=(
            upstream_config(internal.index_url, name="internal"),
            upstream_config(public.index_url, name="pypi"),
        ),
    )
    return replace(config, **overrides)


async def start(aiohttp_client: Any, config: Config) -> TestClient:
    client: TestClient = await aiohttp_client(create_app(config))
    return client


async def page_files(gate: TestClient, project: str) -> list[str]:
    resp = await gate.get(f"/simple/{project}/", headers={"Accept": JSON})
    assert resp.status == 200, await resp.text()
    return [f["filename"] for f in json.loads(await resp.read())["files"]]


# --- dependency confusion --------------------------------------------------------------


async def test_the_internal_package_wins_and_the_public_one_is_never_asked_for(
    aiohttp_client: Any, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    gate = await start(aiohttp_client, two_upstreams(tmp_path / "c", internal, public))
    assert await page_files(gate, "corp-tool") == [CORP_INTERNAL.filename]
    resp = await gate.get("/simple/corp-tool/")
    assert resp.headers["X-Pipgate-Upstream"] == "internal"
    assert public.count("/simple/corp-tool/") == 0
    # Projects the internal index does not have come from the next upstream.
    assert BETA.filename in await page_files(gate, "beta")
    assert (await gate.get("/simple/beta/")).headers["X-Pipgate-Upstream"] == "pypi"


async def test_an_unreachable_internal_index_is_an_error_not_a_public_package(
    aiohttp_client: Any, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    internal.stop()
    gate = await start(aiohttp_client, two_upstreams(tmp_path / "c", internal, public))
    resp = await gate.get("/simple/corp-tool/")
    assert resp.status == 503
    assert resp.headers["X-Pipgate-Reason"] == "connect"
    assert "later upstreams are not asked" in await resp.text()
    assert public.count("/simple/corp-tool/") == 0


async def test_a_remembered_not_found_keeps_later_upstreams_usable_while_an_earlier_is_down(
    aiohttp_client: Any, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    config = two_upstreams(tmp_path / "c", internal, public, index_ttl=0, negative_ttl=0)
    gate = await start(aiohttp_client, config)
    assert (await gate.get("/simple/beta/")).status == 200  # internal said 404 once
    assert (await gate.get("/simple/corp-tool/")).status == 200
    internal.stop()
    beta = await gate.get("/simple/beta/")
    assert beta.status == 200  # the stale "not found" still routes beta to pypi
    assert beta.headers["X-Pipgate-Cache"] == "stale"
    corp = await gate.get("/simple/corp-tool/", headers={"Accept": JSON})
    assert corp.status == 200  # internal's own stale page, never the public one
    assert [f["filename"] for f in (await corp.json(content_type=None))["files"]] == [
        CORP_INTERNAL.filename
    ]
    assert public.count("/simple/corp-tool/") == 0
    # Past max_stale there is nothing to remember: an error, still not the public page.
    strict = await start(
        aiohttp_client,
        two_upstreams(
            tmp_path / "c", internal, public, index_ttl=0, negative_ttl=0, max_stale=0
        ),
    )
    assert (await strict.get("/simple/corp-tool/")).status == 503
    assert (await strict.get("/simple/beta/")).status == 503


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


INSTALLERS = {"pip": pip_install, "uv": uv_install}


@pytest.mark.clients
@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_real_installers_get_the_internal_package_and_never_the_public_one(
    installer: str, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    install = INSTALLERS[installer]
    config = write_config(
        tmp_path / "pipgate.toml",
        '[cache]\nindex_ttl = "0"\n'
        f'[[upstream]]\nname = "internal"\nurl = "{internal.index_url}"\nretries = 0\n'
        f'[[upstream]]\nname = "pypi"\nurl = "{public.index_url}"\nretries = 0\n',
    )
    args = ("--config", str(config))
    with PipgateProcess(upstream=None, cache_dir=tmp_path / "cache", extra_args=args) as gate:
        first = install(gate.index_url, tmp_path / "t1", "corp-tool")
        assert first.returncode == 0, first.stdout + first.stderr
        assert installed(tmp_path / "t1") == {"corp-tool": "1.0"}
        assert (tmp_path / "t1" / "corp_tool" / "origin.txt").read_bytes() == b"internal"
        internal.stop()
        # The internal index is down: its stale page and cached file still serve.
        second = install(gate.index_url, tmp_path / "t2", "corp-tool")
        assert second.returncode == 0, second.stdout + second.stderr
        assert installed(tmp_path / "t2") == {"corp-tool": "1.0"}
    # A fresh pipgate that never saw the internal index cannot install it at all.
    with PipgateProcess(upstream=None, cache_dir=tmp_path / "cold", extra_args=args) as cold:
        third = install(cold.index_url, tmp_path / "t3", "corp-tool")
        assert third.returncode != 0
        assert not (tmp_path / "t3" / "corp_tool").exists()
    assert public.downloads(CORP_PUBLIC.filename) == 0
    assert public.count("/simple/corp-tool/") == 0


async def test_routes_limit_projects_to_named_upstreams_and_merge_when_asked(
    aiohttp_client: Any, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    shared_internal = build_wheel("shared-lib", "1.0", extra_files={"s/x.txt": b"internal"})
    shared_public = build_wheel("shared-lib", "1.0", extra_files={"s/x.txt": b"public"})
    shared_newer = build_wheel("shared-lib", "2.0")
    internal.add(shared_internal)
    public.add(shared_public)
    public.add(shared_newer)
    internal.stop()  # corp-* is routed to the internal index alone: no fall-through
    routes = (
        RouteConfig(("corp-*",), ("internal",)),
        RouteConfig(("shared-*",), ("pypi", "internal"), merge=True),
    )
    gate = await start(
        aiohttp_client, two_upstreams(tmp_path / "c", internal, public, routes=routes)
    )
    assert (await gate.get("/simple/corp-tool/")).status == 503
    assert public.count("/simple/corp-tool/") == 0
    internal.start(internal.port)
    assert await page_files(gate, "corp-tool") == [CORP_INTERNAL.filename]
    # Merged: pypi comes first in this rule, so its 1.0 wins; the internal 1.0 (other
    # contents, same filename) is dropped and counted.
    assert sorted(await page_files(gate, "shared-lib")) == sorted(
        [shared_public.filename, shared_newer.filename]
    )
    path = await file_path(gate, "shared-lib", shared_public.filename)
    assert await (await gate.get(path)).read() == shared_public.data
    text = await (await gate.get("/metrics")).text()
    assert metric_value(text, "pipgate_merge_conflicts_total", upstream="internal") == 1


async def test_the_project_list_is_the_union_of_every_upstream(
    aiohttp_client: Any, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    internal.root_names = ["Alpha", "Internal_Only"]
    gate = await start(aiohttp_client, two_upstreams(tmp_path / "c", internal, public))
    resp = await gate.get("/simple/", headers={"Accept": JSON})
    assert resp.status == 200
    names = [p["name"] for p in json.loads(await resp.read())["projects"]]
    assert "corp-tool" in names and "Internal_Only" in names and "gamma" in names
    normalised = [n.lower().replace("_", "-") for n in names]
    assert normalised == sorted(set(normalised))  # sorted, each project once
    html = await (await gate.get("/simple/")).text()
    assert '<a href="internal-only/">Internal_Only</a>' in html


# --- file hosts and redirects ----------------------------------------------------------


@pytest.fixture
def hosts() -> Iterator[tuple[FakePyPI, FakePyPI, FakePyPI]]:
    """A PyTorch-like index, a files host it is allowed to use, and one it is not."""
    index, cdn, elsewhere = FakePyPI(), FakePyPI(), FakePyPI()
    for fake in (index, cdn, elsewhere):
        fake.start()
    yield index, cdn, elsewhere
    for fake in (index, cdn, elsewhere):
        fake.stop()


def torch_like() -> tuple[BuiltDist, BuiltDist, BuiltDist]:
    return (
        build_wheel("torch", "2.0", extra_files={"torch/a.txt": b"a"}),
        build_wheel("torch", "2.1", extra_files={"torch/b.txt": b"b"}),
        build_wheel("torch", "2.2", extra_files={"torch/c.txt": b"c"}),
    )


async def test_file_links_may_only_point_to_the_upstreams_file_hosts(
    aiohttp_client: Any, hosts: tuple[FakePyPI, FakePyPI, FakePyPI], tmp_path: Path
) -> None:
    index, cdn, elsewhere = hosts
    on_cdn, foreign, own = torch_like()
    for dist in (on_cdn, foreign, own):
        index.add(dist)
    cdn.add(on_cdn)
    elsewhere.add(foreign)
    index.file_bases = {on_cdn.filename: cdn.url, foreign.filename: elsewhere.url}
    config = Config(
        cache_dir=tmp_path / "c",
        upstreams=(upstream_config(index.index_url, name="pytorch", file_hosts=(cdn.url,)),),
    )
    gate = await start(aiohttp_client, config)
    assert sorted(await page_files(gate, "torch")) == sorted([on_cdn.filename, own.filename])
    for dist, host in ((on_cdn, cdn), (own, index)):
        resp = await gate.get(await file_path(gate, "torch", dist.filename))
        assert await resp.read() == dist.data
        assert host.downloads(dist.filename) == 1
    assert elsewhere.requests == []
    text = await (await gate.get("/metrics")).text()
    dropped = metric_value(text, "pipgate_links_dropped_total", upstream="pytorch", cause="origin")
    assert dropped == 1


def test_a_base_href_elsewhere_cannot_move_links_off_the_upstream() -> None:
    body = (
        b'<base href="https://evil.example/x/">'
        b'<a href="torch-2.0-py3-none-any.whl#sha256=' + b"a" * 64 + b'">t</a>'
    )
    page = parse_project_html(body, "https://download.pytorch.org/whl/cpu/torch/", "torch")
    assert page.files[0].url.startswith("https://evil.example/")
    rule = OriginRule(["https://download.pytorch.org"])
    kept, dropped = keep_allowed_files(page, rule)
    assert (kept.files, dropped) == ((), 1)


async def test_redirects_are_followed_only_to_file_hosts(
    aiohttp_client: Any, hosts: tuple[FakePyPI, FakePyPI, FakePyPI], tmp_path: Path
) -> None:
    index, cdn, elsewhere = hosts
    to_cdn, to_elsewhere, _ = torch_like()
    for dist in (to_cdn, to_elsewhere):
        index.add(dist)
    cdn.add(to_cdn)
    elsewhere.add(to_elsewhere)
    index.redirects = {
        to_cdn.filename: cdn.url + cdn.file_path(to_cdn),
        to_elsewhere.filename: elsewhere.url + elsewhere.file_path(to_elsewhere),
    }
    config = Config(
        cache_dir=tmp_path / "c",
        upstreams=(upstream_config(index.index_url, name="pytorch", file_hosts=(cdn.url,)),),
    )
    gate = await start(aiohttp_client, config)
    ok = await gate.get(await file_path(gate, "torch", to_cdn.filename))
    assert await ok.read() == to_cdn.data
    refused = await gate.get(await file_path(gate, "torch", to_elsewhere.filename))
    assert refused.status == 502
    assert refused.headers["X-Pipgate-Reason"] == "redirect"
    assert elsewhere.requests == []


async def test_a_redirect_from_https_to_http_is_refused(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    ca = PrivateCA()
    index, plain = FakePyPI([ALPHA]), FakePyPI([ALPHA])
    index.start(ssl_context=ca.server_context())
    plain.start()
    try:
        index.redirects = {ALPHA.filename: plain.url + plain.file_path(ALPHA)}
        slice_ = upstream_config(
            index.index_url, ca_bundle=ca.ca_bundle(tmp_path / "ca.pem"), file_hosts=(plain.url,)
        )
        gate = await start(aiohttp_client, Config(cache_dir=tmp_path / "c", upstreams=(slice_,)))
        resp = await gate.get(await file_path(gate, "alpha", ALPHA.filename))
        assert resp.status == 502
        assert resp.headers["X-Pipgate-Reason"] == "redirect"
        assert plain.requests == []
    finally:
        index.stop()
        plain.stop()


# --- credentials, hashes, proxies ------------------------------------------------------


async def test_credentials_in_the_upstream_url_reach_its_pages_and_files_and_nothing_else(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    password = "pa:ss@w/rd"
    private, cdn = FakePyPI.with_sample_tree(), FakePyPI.with_sample_tree()
    private.start()
    cdn.start()
    private.auth = ("ci", password)  # every request, pages and files alike
    private.file_bases = {BETA.filename: cdn.url}
    try:
        quoted = urllib.parse.quote(password, safe="")
        url = private.index_url.replace("http://", f"http://ci:{quoted}@")
        toml = write_config(
            tmp_path / "p.toml",
            f'[upstream]\nurl = "{url}"\nfile_hosts = ["{cdn.url}"]\nretries = 0\n',
        )
        config = load_config(config_file=toml, env={}, flags={"cache_dir": str(tmp_path / "c")})
        assert password not in repr(config) and quoted not in config.upstreams[0].url
        gate = await start(aiohttp_client, config)
        alpha = await gate.get(await file_path(gate, "alpha", ALPHA.filename))
        assert await alpha.read() == ALPHA.data  # a file on the index's own origin
        beta = await gate.get(await file_path(gate, "beta", BETA.filename))
        assert await beta.read() == BETA.data
        assert all("authorization" not in h for _, _, h in cdn.requests)
        seen = [
            await (await gate.get(p)).text() for p in ("/metrics", "/readyz", "/", "/-/failures")
        ]
        for text in [*seen, caplog.text]:
            assert password not in text and quoted not in text
    finally:
        private.stop()
        cdn.stop()


async def test_require_hashes_refuses_files_published_without_a_sha256(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    unhashed = build_wheel("nohash", "1.0")
    fake = FakePyPI()
    fake.add(unhashed, hashed=False)
    fake.start()
    try:
        lax = Config(cache_dir=tmp_path / "a", upstreams=(upstream_config(fake.index_url),))
        gate = await start(aiohttp_client, lax)
        path = await file_path(gate, "nohash", unhashed.filename)
        resp = await gate.get(path)
        assert await resp.read() == unhashed.data  # cached as unverified
        strict = Config(
            cache_dir=tmp_path / "b",
            upstreams=(upstream_config(fake.index_url, require_hashes=True),),
        )
        gate = await start(aiohttp_client, strict)
        assert await page_files(gate, "nohash") == []  # not offered at all
        resp = await gate.get(path)  # the URL from a lock file made with the lax server
        assert resp.status == 403
        assert resp.headers["X-Pipgate-Reason"] == "policy"
        assert "require_hashes" in await resp.text()
        assert fake.downloads(unhashed.filename) == 1  # only the lax gate fetched it
    finally:
        fake.stop()


async def test_one_upstream_goes_through_a_proxy_and_another_directly(
    aiohttp_client: Any, internal: FakePyPI, public: FakePyPI, tmp_path: Path
) -> None:
    with ForwardProxy() as proxy:
        config = Config(
            cache_dir=tmp_path / "c",
            upstreams=(
                upstream_config(internal.index_url, name="internal"),
                upstream_config(public.index_url, name="pypi", proxy=(proxy.url,)),
            ),
        )
        gate = await start(aiohttp_client, config)
        corp = await gate.get(await file_path(gate, "corp-tool", CORP_INTERNAL.filename))
        assert await corp.read() == CORP_INTERNAL.data
        alpha = await gate.get(await file_path(gate, "alpha", ALPHA.filename))
        assert await alpha.read() == ALPHA.data
        await asyncio.to_thread(proxy.wait_for, ALPHA.filename)
        through = proxy.requests()
        assert any(f"127.0.0.1:{public.port}/simple/alpha/" in r for r in through)
        assert not any(f":{internal.port}" in r for r in through)
        assert internal.count("/simple/corp-tool/") == 1
