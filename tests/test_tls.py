"""TLS termination: a real ``pipgate serve --tls-cert --tls-key`` with a private CA, real
pip and uv installing through ``https://127.0.0.1:PORT/simple/``, and what is refused
(clients without the CA, TLS 1.1, weak cipher suites, a certificate with the wrong key)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests.support.clients import installed, pip_install, uv_install
from tests.support.fake_pypi import FakePyPI
from tests.support.server import PipgateProcess, free_port

#: What ``alpha`` resolves to (see tests/test_clients.py).
EXPECTED = {"alpha": "1.0", "beta": "1.0", "gamma": "0.5", "delta": "3.0"}


class Certs:
    """A private CA and a server certificate for 127.0.0.1, as PEM files (RSA keys, so
    that suites with RSA key exchange are possible and must be refused by choice)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        rsa = trustme.KeyType.RSA
        self.ca = trustme.CA(organization_name="pipgate TLS test CA", key_type=rsa)
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", key_type=rsa)
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self.cert = directory / "server.pem"
        self.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        self.key = directory / "server.key"
        leaf.private_key_pem.write_to_path(str(self.key))
        other = self.ca.issue_cert("127.0.0.1", key_type=rsa)
        self.other_key = directory / "other.key"
        other.private_key_pem.write_to_path(str(self.other_key))
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        self.encrypted_key = directory / "encrypted.key"
        self.encrypted_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )

    def client_context(self) -> ssl.SSLContext:
        """A client that trusts only this CA (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path / "tls")


@pytest.fixture
def tls_gate(upstream: FakePyPI, certs: Certs, tmp_path: Path) -> Iterator[PipgateProcess]:
    """pipgate serving HTTPS with the private CA's certificate."""
    gate = PipgateProcess(
        upstream=upstream.index_url,
        cache_dir=tmp_path / "cache",
        extra_args=("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
        ssl_context=certs.client_context(),
    )
    with gate:
        yield gate


def handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """Connect, complete the TLS handshake; the version and cipher suite it agreed on."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None


def legacy_client(certs: Certs, *, maximum: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client willing to speak old protocol versions and suites (security level 0)."""
    context = certs.client_context()
    with warnings.catch_warnings():  # asking for TLS 1.0 is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    context.set_ciphers(ciphers)
    return context


@pytest.mark.clients
@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_pip_installs_through_https_with_the_private_ca(
    tls_gate: PipgateProcess,
    certs: Certs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    # pip 26.3's --cert (and PIP_CERT) did not take a private CA here: with truststore,
    # the default since pip 24.2, the CA must come from the environment (see README).
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setenv(variable, str(certs.ca_pem))  # clean_env keeps both
    assert tls_gate.index_url.startswith("https://127.0.0.1:")
    result = pip_install(tls_gate.index_url, tmp_path / "target", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed(tmp_path / "target") == EXPECTED


@pytest.mark.clients
def test_uv_installs_through_https_with_ssl_cert_file(
    tls_gate: PipgateProcess, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_pem))  # clean_env keeps it
    result = uv_install(tls_gate.index_url, tmp_path / "target", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed(tmp_path / "target") == EXPECTED


@pytest.mark.clients
def test_clients_without_the_ca_refuse_the_server(
    tls_gate: PipgateProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system's trust store lacks the CA.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    pip = pip_install(tls_gate.index_url, tmp_path / "pip", "alpha", extra=("--no-deps",))
    assert pip.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in pip.stdout + pip.stderr
    uv = uv_install(tls_gate.index_url, tmp_path / "uv", "alpha", extra=("--no-deps",))
    assert uv.returncode != 0
    assert "certificate" in (uv.stdout + uv.stderr).lower()
    assert not installed(tmp_path / "pip") and not installed(tmp_path / "uv")


def test_the_server_speaks_tls_1_3_and_1_2_with_forward_secret_aead_suites_only(
    tls_gate: PipgateProcess, certs: Certs
) -> None:
    version, _ = handshake(tls_gate.port, certs.client_context())
    assert version == "TLSv1.3"
    good = "ECDHE-RSA-AES128-GCM-SHA256"
    tls12 = legacy_client(certs, maximum=ssl.TLSVersion.TLSv1_2, ciphers=good)
    assert handshake(tls_gate.port, tls12) == ("TLSv1.2", good)
    # RSA key exchange (no forward secrecy) and CBC suites are not offered.
    for weak in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "AES256-SHA"):
        client = legacy_client(
            certs, maximum=ssl.TLSVersion.TLSv1_2, ciphers=f"{weak}:@SECLEVEL=0"
        )
        refused_by_pipgate_only(tls_gate.port, client, certs, ("TLSv1.2", weak))


def test_tls_1_1_is_refused(tls_gate: PipgateProcess, certs: Certs) -> None:
    client = legacy_client(certs, maximum=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    refused_by_pipgate_only(tls_gate.port, client, certs, ("TLSv1.1", None))


def refused_by_pipgate_only(
    port: int, client: ssl.SSLContext, certs: Certs, agreed: tuple[str, str | None]
) -> None:
    """``client`` fails with pipgate, but completes the handshake with a server that
    allows everything (the control): the refusal is pipgate's, not a limit of the local
    OpenSSL."""
    with permissive_server(certs) as control:
        version, cipher = handshake(control, client)
    assert version == agreed[0] and (agreed[1] is None or cipher == agreed[1])
    with pytest.raises(ssl.SSLError):
        handshake(port, client)


class permissive_server:
    """A TLS server on loopback that accepts TLS 1.0 and up (the control experiment)."""

    def __init__(self, certs: Certs) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.context.minimum_version = ssl.TLSVersion.TLSv1
        self.context.set_ciphers("DEFAULT:@SECLEVEL=0")
        self.context.load_cert_chain(str(certs.cert), str(certs.key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve_one, daemon=True)

    def _serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with self.context.wrap_socket(conn, server_side=True):
                pass
        except OSError:
            pass

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.mark.parametrize("broken", ["wrong key", "garbage cert", "missing key", "encrypted key"])
def test_an_unusable_certificate_stops_the_server_with_one_line(
    certs: Certs, tmp_path: Path, broken: str
) -> None:
    cert, key = certs.cert, certs.key
    if broken == "wrong key":
        key = certs.other_key
    elif broken == "garbage cert":
        cert = tmp_path / "garbage.pem"
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    elif broken == "encrypted key":
        key = certs.encrypted_key
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    if broken == "missing key":
        args = ["--tls-cert", str(cert)]
    cmd = [
        sys.executable, "-m", "pipgate", "serve", "--port", str(free_port()),
        "--cache-dir", str(tmp_path / "cache"), "--upstream", "http://127.0.0.1:9/simple/",
        *args,
    ]  # fmt: skip
    status, output = run_on_a_terminal(cmd)
    assert status == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("pipgate: configuration error: server.tls_")
    assert "Traceback" not in output and "PRIVATE KEY" not in output
    if broken == "encrypted key":
        assert "is encrypted" in output and "pass phrase" not in output.lower()


def run_on_a_terminal(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as its controlling terminal (where OpenSSL
    would prompt for a passphrase, and wait); its exit status and all it printed."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        proc = subprocess.run(
            cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # A session leader that opens a terminal takes it as its controlling one.
            preexec_fn=lambda: os.close(os.open(name, os.O_RDWR)),
            timeout=timeout,
            check=False,
        )
        os.close(slave)
        slave = -1
        chunks = []
        with contextlib.suppress(OSError):  # EIO once everything written was read
            while chunk := os.read(master, 65536):
                chunks.append(chunk)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
