"""A private certificate authority for TLS tests (corporate CAs, mutual TLS).

Upstreams behind a company firewall are often signed by an internal CA that no public
trust store knows; pipgate must trust it only when told (``ca_bundle``) and fail with a
clear TLS error otherwise. `PrivateCA` issues such certificates with trustme, in memory.
"""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

import trustme

#: The names every server certificate is valid for (what the fakes listen on).
SERVER_NAMES = ("127.0.0.1", "localhost")


class PrivateCA:
    """A throw-away CA: server contexts for the fakes, PEM files for pipgate and clients."""

    def __init__(self) -> None:
        # A unique organisation name, so a test can tell *this* CA from any other in an
        # "unknown issuer" message.
        self.issuer_name = f"pipgate test CA {secrets.token_hex(4)}"
        self._ca = trustme.CA(organization_name=self.issuer_name)
        self._server_cert = self._ca.issue_cert(*SERVER_NAMES)
        self._client_leaf = self._ca.issue_cert("pipgate-client@example.test")

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server context for 127.0.0.1/localhost; with `require_client_cert`, only
        clients presenting a certificate from this CA complete the handshake (mTLS)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # empty trust store: only this CA
        self._server_cert.configure_cert(ctx)
        if require_client_cert:
            self._ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        """A client context trusting only this CA (optionally presenting a client cert),
        for test clients talking to the fakes directly."""
        # Not create_default_context(): it would load the system store too, and a test
        # trusting a public CA by accident would prove nothing.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies peer and host name
        self._ca.configure_trust(ctx)
        if with_client_cert:
            self._client_leaf.configure_cert(ctx)
        return ctx

    def ca_bundle(self, path: Path) -> Path:
        """Write the CA certificate as PEM to `path` (pipgate's ``ca_bundle``); return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ca.cert_pem.write_to_path(str(path))
        return path

    def client_cert(self, path_dir: Path) -> tuple[Path, Path]:
        """Write a client certificate (chain) and its key under `path_dir`, for mTLS."""
        path_dir.mkdir(parents=True, exist_ok=True)
        leaf = self._client_leaf
        cert_path, key_path = path_dir / "client.pem", path_dir / "client.key"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key_path.write_bytes(leaf.private_key_pem.bytes())
        return cert_path, key_path
