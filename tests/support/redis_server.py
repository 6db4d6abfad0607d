"""A real redis-server on loopback for the coordination tests, stoppable and restartable.

It keeps its port across :meth:`RedisServer.stop` and :meth:`RedisServer.start`, so a
client configured once sees "Redis went away" and "Redis is back". Nothing is persisted
(``--save ''``, no AOF): a restarted server is empty, like a failed-over one.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.process import ServiceProcess
from tests.support.server import free_port

#: redis-server answers in ~15 ms; this bounds a slow CI host.
START_TIMEOUT = 10.0
#: After SIGTERM (it exits at once without persistence), how long before SIGKILL.
STOP_GRACE = 5.0


def redis_binary() -> str | None:
    """The ``redis-server`` on PATH, or ``None``."""
    return shutil.which("redis-server")


def _answers(port: int) -> bool:
    """Whether a Redis on ``port`` answers PING (``-NOAUTH`` counts: it is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer(ServiceProcess):
    """``redis-server`` on a free 127.0.0.1 port, working in ``workdir``."""

    def __init__(self, workdir: Path, *, requirepass: str | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.requirepass = requirepass
        self.port = free_port()
        self.log_path = workdir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (never with the password in it)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start (again, on the same port) and wait until it answers PING."""
        if self.proc is not None:
            raise RuntimeError("redis-server already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
        ]
        if self.requirepass is not None:
            command += ["--requirepass", self.requirepass]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"redis-server exited early:\n{self.log_tail()}")
            if _answers(self.port):
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (thawed first), SIGKILL after :data:`STOP_GRACE`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a frozen server acts on SIGTERM only then
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_GRACE)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
