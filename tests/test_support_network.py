"""The corporate-network test kit must behave like the real thing, or pipgate's proxy,
TLS, retry and resume tests prove nothing.

Plain aiohttp clients (not pipgate) check that `ForwardProxy` really forwards and
tunnels and reports what it handled, that `PrivateCA` certificates are trusted only
when asked, and that FakePyPI's new faults (reset mid-body, transient failures, no
ranges) look on the wire the way a real network shows them.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from tests.conftest import CLIENT_TIMEOUT
from tests.support.fake_pypi import Failure, FakePyPI
from tests.support.forward_proxy import ForwardProxy
from tests.support.packages import BuiltDist, build_wheel
from tests.support.tls import PrivateCA

pytestmark = pytest.mark.timeout(60)

AUTH = ("proxyuser", "s3cret:p@ss")


@pytest.fixture(scope="module")
def ca() -> PrivateCA:
    """One private CA for the module (key generation is the slow part)."""
    return PrivateCA()


@pytest.fixture
def big() -> BuiltDist:
    """A 300 kB wheel: several chunks, so a cut lands mid-body."""
    return build_wheel("bigpkg", "1.0", pad_to=300_000)


@pytest.fixture
def plain_up(big: BuiltDist) -> Iterator[FakePyPI]:
    """The sample tree (plus `big`) over plain http."""
    with FakePyPI.with_sample_tree() as fake:
        fake.add(big, metadata=False)
        yield fake


@pytest.fixture
def tls_up(ca: PrivateCA, big: BuiltDist) -> Iterator[FakePyPI]:
    """The sample tree (plus `big`) over https, signed by the private CA."""
    fake = FakePyPI.with_sample_tree()
    fake.add(big, metadata=False)
    fake.start(ssl_context=ca.server_context())
    yield fake
    fake.stop()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    """An open forward proxy process."""
    with ForwardProxy() as fwd:
        yield fwd


@pytest.fixture
def auth_proxy() -> Iterator[ForwardProxy]:
    """A forward proxy that wants Basic credentials `AUTH`."""
    with ForwardProxy(auth=AUTH) as fwd:
        yield fwd


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


# -- forward proxy ---------------------------------------------------------------------


async def test_proxy_forwards_plain_http_and_reports_the_absolute_uri(
    plain_up: FakePyPI, proxy: ForwardProxy
) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for _ in range(2):  # the second request reuses the kept-alive proxy connection
            async with session.get(plain_up.index_url + "alpha/", proxy=proxy.url) as resp:
                assert resp.status == 200
                assert "alpha" in (await resp.json())["name"]

    assert proxy.requests() == [f"GET {plain_up.index_url}alpha/"] * 2
    assert proxy.count("GET http://") == 2
    # The upstream saw the proxy hop, and no proxy credentials.
    (seen, _) = plain_up.headers_for("/simple/alpha/")
    assert "proxy.py" in seen["via"] and "proxy-authorization" not in seen


async def test_proxy_tunnels_https_with_connect_to_a_private_ca_upstream(
    ca: PrivateCA, tls_up: FakePyPI, proxy: ForwardProxy
) -> None:
    assert tls_up.url.startswith("https://127.0.0.1:")
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        url = tls_up.index_url + "alpha/"
        async with session.get(url, proxy=proxy.url, ssl=ca.client_context()) as resp:
            assert resp.status == 200
            page = await resp.json()

    assert all(f["url"].startswith(tls_up.url + "/packages/") for f in page["files"])
    assert proxy.requests() == [f"CONNECT 127.0.0.1:{tls_up.port}"]
    assert tls_up.count("/simple/alpha/") == 1


async def test_authenticated_proxy_answers_407_unless_the_password_is_right(
    plain_up: FakePyPI, ca: PrivateCA, tls_up: FakePyPI, auth_proxy: ForwardProxy
) -> None:
    # Credentials are percent-encoded: this password holds ":" and "@".
    assert auth_proxy.url == f"http://127.0.0.1:{auth_proxy.port}"
    assert auth_proxy.url_with_auth() == (
        f"http://proxyuser:s3cret%3Ap%40ss@127.0.0.1:{auth_proxy.port}"
    )
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for proxy_url in (auth_proxy.url, auth_proxy.url_with_auth(password="wrong")):
            async with session.get(plain_up.index_url, proxy=proxy_url) as resp:
                assert resp.status == 407
                assert resp.headers["Proxy-Authenticate"] == "Basic"
        # For https the 407 answers the CONNECT, so aiohttp raises instead.
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            await session.get(
                tls_up.index_url,
                proxy=auth_proxy.url_with_auth(password="wrong"),
                ssl=ca.client_context(),
            )
        assert info.value.status == 407

        async with session.get(plain_up.index_url, proxy=auth_proxy.url_with_auth()) as resp:
            assert resp.status == 200
        url = tls_up.index_url
        async with session.get(
            url, proxy=auth_proxy.url_with_auth(), ssl=ca.client_context()
        ) as resp:
            assert resp.status == 200

    assert auth_proxy.denied() == [f"GET {plain_up.index_url}"] * 2 + [
        f"CONNECT 127.0.0.1:{tls_up.port}"
    ]
    assert auth_proxy.requests() == [
        f"GET {plain_up.index_url}",
        f"CONNECT 127.0.0.1:{tls_up.port}",
    ]
    assert plain_up.count("/simple/") == 1  # refused requests never reached upstream


async def test_stopped_proxy_refuses_and_restarts_on_its_port(
    plain_up: FakePyPI, proxy: ForwardProxy
) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        async with session.get(plain_up.index_url, proxy=proxy.url) as resp:
            assert resp.status == 200
        assert proxy.pid is not None
        pgid, port = proxy.pid, proxy.port
        proxy.stop()
        assert not group_alive(pgid), "a proxy.py process outlived stop()"
        with pytest.raises(aiohttp.ClientProxyConnectionError):
            await session.get(plain_up.index_url, proxy=proxy.url)

        proxy.start(port)
        assert proxy.port == port
        async with session.get(plain_up.index_url, proxy=proxy.url) as resp:
            assert resp.status == 200
    # The log spans restarts.
    assert proxy.requests() == [f"GET {plain_up.index_url}"] * 2


# -- private CA ------------------------------------------------------------------------


async def test_tls_upstream_is_trusted_only_with_the_private_ca(
    ca: PrivateCA, tls_up: FakePyPI, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        # The system trust store does not know the private CA.
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await session.get(tls_up.index_url, ssl=ssl.create_default_context())
        error = info.value.certificate_error
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert error.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY

        bundle = ca.ca_bundle(tmp_path / "corp-ca.pem")
        subject = x509.load_pem_x509_certificate(bundle.read_bytes()).subject
        assert ca.issuer_name in subject.rfc4514_string()
        trusting = ssl.create_default_context(cafile=bundle)
        async with session.get(tls_up.index_url, ssl=trusting) as resp:
            assert resp.status == 200


async def test_mutual_tls_upstream_wants_a_client_certificate(
    ca: PrivateCA, tmp_path: Path
) -> None:
    fake = FakePyPI.with_sample_tree()
    fake.start(ssl_context=ca.server_context(require_client_cert=True))
    try:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            # Under TLS 1.3 the refusal may only surface on the first read: either way
            # the request fails.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(fake.index_url, ssl=ca.client_context()) as resp:
                    await resp.read()

            cert, key = ca.client_cert(tmp_path / "client")
            with_cert = ca.client_context()
            with_cert.load_cert_chain(cert, key)
            async with session.get(fake.index_url, ssl=with_cert) as resp:
                assert resp.status == 200
    finally:
        fake.stop()


# -- FakePyPI faults -------------------------------------------------------------------


@pytest.fixture(params=["http", "https"])
def either_up(
    request: pytest.FixtureRequest, ca: PrivateCA, big: BuiltDist
) -> Iterator[tuple[FakePyPI, ssl.SSLContext | bool]]:
    """`big` served over http, then over https: (fake, the client's ``ssl=`` value)."""
    tls = request.param == "https"
    fake = FakePyPI([big])
    fake.start(ssl_context=ca.server_context() if tls else None)
    yield fake, ca.client_context() if tls else True
    fake.stop()


async def test_reset_mid_body_then_range_resume_completes_the_file(
    either_up: tuple[FakePyPI, ssl.SSLContext | bool], big: BuiltDist
) -> None:
    up, tls = either_up
    up.reset_after[big.filename] = 100_000
    up.reset_times[big.filename] = 1
    received = bytearray()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(up.file_url(big), ssl=tls) as resp:
                assert resp.content_length == big.size  # the whole file was promised
                async for block in resp.content.iter_any():
                    received += block
        # Every byte written before the RST reached the client.
        assert len(received) == 100_000

        headers = {"Range": f"bytes={len(received)}-", "If-Range": f'"{big.sha256}"'}
        async with session.get(up.file_url(big), headers=headers, ssl=tls) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100000-{big.size - 1}/{big.size}"
            rest = await resp.read()

    assert hashlib.sha256(bytes(received) + rest).hexdigest() == big.sha256
    assert up.reset_times[big.filename] == 0
    assert [h.get("range") for h in up.headers_for(up.file_path(big))] == [None, "bytes=100000-"]


def test_reset_is_a_tcp_rst_not_a_clean_close(plain_up: FakePyPI, big: BuiltDist) -> None:
    plain_up.reset_after[big.filename] = 5_000
    with socket.create_connection(("127.0.0.1", plain_up.port), timeout=5) as sock:
        sock.sendall(f"GET {plain_up.file_path(big)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    assert len(data.partition(b"\r\n\r\n")[2]) == 5_000


async def test_if_range_mismatch_and_no_ranges_send_the_whole_file(
    plain_up: FakePyPI, big: BuiltDist
) -> None:
    url = plain_up.file_url(big)
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        stale = {"Range": "bytes=10-", "If-Range": '"not-the-etag"'}
        async with session.get(url, headers=stale) as resp:
            assert resp.status == 200 and await resp.read() == big.data

        plain_up.no_ranges.add(big.filename)
        fresh = {"Range": "bytes=10-", "If-Range": f'"{big.sha256}"'}
        async with session.get(url, headers=fresh) as resp:
            assert resp.status == 200 and "Content-Range" not in resp.headers
            assert await resp.read() == big.data


async def test_page_and_file_fail_n_times_with_retry_after_then_succeed(
    plain_up: FakePyPI, big: BuiltDist
) -> None:
    plain_up.page_fail_times["Alpha"] = Failure(2, 503, retry_after="1")
    plain_up.file_fail_times[big.filename] = (1, 429, "2")
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for _ in range(2):
            async with session.get(plain_up.index_url + "alpha/") as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        async with session.get(plain_up.index_url + "alpha/") as resp:
            assert resp.status == 200
        async with session.get(plain_up.index_url + "beta/") as resp:
            assert resp.status == 200  # other pages are unaffected

        async with session.get(plain_up.file_url(big)) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "2"
        async with session.get(plain_up.file_url(big)) as resp:
            assert resp.status == 200 and await resp.read() == big.data

    assert plain_up.page_fail_times["Alpha"] == Failure(0, 503, "1")
    assert plain_up.count("/simple/alpha/") == 3


async def test_root_page_failures_use_the_empty_key(plain_up: FakePyPI) -> None:
    plain_up.page_fail_times[""] = Failure(1)
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        async with session.get(plain_up.index_url) as resp:
            assert resp.status == 503 and "Retry-After" not in resp.headers
        async with session.get(plain_up.index_url) as resp:
            assert resp.status == 200


async def test_page_delay_and_file_header_delay_hold_back_the_headers(
    plain_up: FakePyPI, big: BuiltDist
) -> None:
    plain_up.page_delay = plain_up.file_header_delay = 2.0
    impatient = aiohttp.ClientTimeout(sock_read=0.2)
    async with aiohttp.ClientSession(timeout=impatient) as session:
        for url in (plain_up.index_url, plain_up.file_url(big)):
            with pytest.raises(aiohttp.ServerTimeoutError):
                await session.get(url)
