"""Proxy choice: NO_PROXY forms, failover order, cool-down, credentials kept apart."""

from __future__ import annotations

import pytest

from pipgate.upstream.proxy import ProxyChooser, bypasses_proxy, make_proxy


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("pypi.org", 443, "pypi.org", True),
        ("files.pypi.org", 443, ".pypi.org", True),
        ("files.pypi.org", 443, "pypi.org", True),  # curl/requests: a suffix match
        ("notpypi.org", 443, "pypi.org", False),
        ("pypi.org", 443, "*", True),
        ("pypi.org", 443, "example.com, pypi.org", True),
        ("pypi.org", 443, "pypi.org:8443", False),
        ("pypi.org", 8443, "pypi.org:8443", True),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("127.0.0.1", 80, "127.0.0.0/8,::1", True),
        ("::1", 80, "::1", True),
        ("pypi.org", 443, "10.0.0.0/8", False),
        ("pypi.org", 443, "", False),
        ("PyPI.org", 443, "PYPI.ORG", True),
    ],
)
def test_no_proxy_forms(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_credentials_are_split_out_of_the_proxy_url() -> None:
    proxy = make_proxy("http://alice:s%40cret@proxy.corp:3128")
    assert proxy.url == "http://proxy.corp:3128"
    assert proxy.auth == ("alice", "s@cret")
    assert proxy.label == "proxy.corp:3128"
    assert "s@cret" not in repr(proxy)


def test_configured_auth_wins_over_url_credentials() -> None:
    proxy = make_proxy("http://old:pw@proxy.corp:3128", ("bob", "new"))
    assert proxy.auth == ("bob", "new")


def test_failed_proxy_goes_last_until_its_cool_down_ends() -> None:
    chooser = ProxyChooser(
        ["http://a:3128", "http://b:3128"], auth=None, env={}, cooldown=60.0
    )
    first, second = chooser.for_url("https://pypi.org/simple/")
    assert first is not None and first.url == "http://a:3128"
    chooser.failed(first)
    order = [p.url for p in chooser.for_url("https://pypi.org/simple/") if p]
    assert order == ["http://b:3128", "http://a:3128"]  # still tried when all else fails
    chooser.succeeded(first)
    assert next(p.url for p in chooser.for_url("https://x/") if p) == "http://a:3128"
    assert second is not None


def test_environment_proxies_apply_only_without_configured_ones() -> None:
    env = {"https_proxy": "http://envproxy:8080", "no_proxy": "internal.corp,10.0.0.0/8"}
    chooser = ProxyChooser([], auth=None, env=env, cooldown=60.0)
    chosen = chooser.for_url("https://pypi.org/simple/")
    assert [p.url if p else None for p in chosen] == ["http://envproxy:8080"]
    assert chooser.for_url("https://pypi.internal.corp/simple/") == [None]
    assert chooser.for_url("http://10.2.3.4/simple/") == [None]  # no http_proxy set
    configured = ProxyChooser(["http://cfg:3128"], auth=None, env=env, cooldown=60.0)
    assert [p.url for p in configured.for_url("https://pypi.org/") if p] == ["http://cfg:3128"]
