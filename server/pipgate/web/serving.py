"""Running the application on a socket: TLS, the connection cap, keep-alive, shutdown.

One function serves the single process and every worker alike, so the limits a client
meets do not depend on ``--workers``. aiohttp's own ``run_app`` has no connection cap,
so the listening site here wraps aiohttp's protocol factory: past ``max_connections``
open connections, a new one is closed at once (the client sees a reset, retries, and
reaches a worker with room), instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable

from aiohttp import web

from pipgate.config import Config
from pipgate.web import hot_path
from pipgate.web.state import SERVICES

log = logging.getLogger("pipgate.web")

#: TLS 1.2 suites offered (TLS 1.3 has only modern ones): forward secret and AEAD only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Seconds running requests get to finish at shutdown.
SHUTDOWN_TIMEOUT = 10.0
#: Pending connections the kernel queues per listening socket.
BACKLOG = 1024


class TLSError(Exception):
    """The certificate or key cannot be used (the message says which and why)."""


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context of ``config``, or ``None`` for plain http."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        # A passphrase callback: without one, OpenSSL would prompt on the terminal for
        # an encrypted key and the server would hang at start instead of saying why.
        context.load_cert_chain(
            str(config.tls_cert), str(config.tls_key), password=_no_passphrase
        )
    except _EncryptedKey:
        raise TLSError(
            f"server.tls_key: {config.tls_key} is encrypted; pipgate needs the key without "
            "a passphrase (openssl pkey -in KEY -out PLAIN-KEY)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise TLSError(
            f"server.tls_cert/server.tls_key: cannot load {config.tls_cert} with "
            f"{config.tls_key} ({reason})"
        ) from None
    return context


class _EncryptedKey(Exception):
    """The key file asks for a passphrase."""


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def raise_open_file_limit() -> None:
    """Lift the soft limit of open files to the hard one: each client connection, file
    being sent and download holds descriptors, and a soft limit of 1024 would cap the
    server below ``server.max_connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` glibc malloc arenas (``MALLOC_ARENA_MAX``), unless the
    environment sets it. glibc gives each thread that allocates an arena of its own,
    up to 8 per core; the worker threads (catalog, hashing, rendering) each kept
    fragments of theirs, several MiB per worker in a 10-minute soak, for no speed a
    mostly single-threaded server needs. Elsewhere than glibc, nothing happens."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


def bind(host: str, port: int, *, listen: bool) -> socket.socket:
    """A ``SO_REUSEPORT`` socket on ``host:port`` (port 0: pick one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(BACKLOG)
        sock.setblocking(False)
    return sock


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class CappedSite(web.SockSite):
    """A listening socket that accepts at most ``max_connections`` open connections."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        max_connections: int,
        on_refused: Callable[[], None],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(
            runner,
            sock,
            ssl_context=ssl_context,
            backlog=BACKLOG,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        self._max_connections = max_connections
        self._on_refused = on_refused

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self._max_connections:
                self._on_refused()
                return _Refused()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
        )


class StalledWrites:
    """Aborts connections whose written bytes the client has not taken for
    ``timeout`` seconds (responses written whole, such as pages: the file handler
    bounds its own sendfile steps). A buffer that shrank counts as progress."""

    def __init__(self, server: web.Server, timeout: float, on_cut: Callable[[], None]) -> None:
        self._server = server
        self._timeout = timeout
        self._on_cut = on_cut
        self._pending: dict[object, tuple[int, float]] = {}

    def sweep(self, now: float) -> None:
        """Look at every connection once."""
        seen: dict[object, tuple[int, float]] = {}
        for handler in self._server.connections:
            transport = handler.transport
            if transport is None or transport.is_closing():
                continue
            buffered = transport.get_write_buffer_size()
            if buffered == 0:
                continue
            before = self._pending.get(handler)
            if before is None or buffered < before[0]:
                seen[handler] = (buffered, now)
                continue
            if now - before[1] >= self._timeout:
                log.warning("client took no bytes for %.0f s: connection cut", self._timeout)
                self._on_cut()
                transport.abort()
                continue
            seen[handler] = (buffered, before[1])
        self._pending = seen

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.05, min(5.0, self._timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.sweep(loop.time())


def run(app: web.Application, config: Config, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then shut down gracefully."""
    asyncio.run(_serve(app, config, sock))


async def _serve(app: web.Application, config: Config, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = hot_path.Runner(
        app,
        access_log=None,
        keepalive_timeout=config.keepalive_timeout,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        handle_signals=False,
    )
    await runner.setup()
    try:
        metrics = app[SERVICES].metrics

        def refused() -> None:
            metrics.limited.labels(limit="connections").inc()

        site = CappedSite(
            runner,
            sock,
            max_connections=config.max_connections,
            on_refused=refused,
            ssl_context=tls_context(config),
        )
        await site.start()
        assert runner.server is not None
        stalled = StalledWrites(
            runner.server,
            config.send_timeout,
            lambda: metrics.limited.labels(limit="send_timeout").inc(),
        )
        sweeper = asyncio.create_task(stalled.run(), name="stalled-writes")
        await stop.wait()
        sweeper.cancel()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
