"""``--workers N``: N processes serving one port, sharing one cache.

The supervisor reserves the port, reconciles the cache once, then forks the workers.
Each worker listens on its own ``SO_REUSEPORT`` socket bound to that port, so the
kernel spreads connections evenly over the workers (a single shared listening socket
lets one busy worker take most of them). Cross-process coordination
(one upstream download per file, eviction, scrubbing) goes through file locks in the
cache directory (:mod:`pipgate.store.locks`), which a killed worker releases by dying.
A worker that exits unexpectedly is restarted; SIGTERM/SIGINT stop them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import signal
import socket
import time
from types import FrameType

from aiohttp import web

from pipgate.app import create_app
from pipgate.config import Config
from pipgate.store.reconcile import reconcile

log = logging.getLogger("pipgate.workers")

#: Seconds between restarts of a crashing worker (so a crash loop does not spin).
RESTART_DELAY = 1.0
#: Seconds the workers get to finish after SIGTERM before they are killed.
STOP_GRACE = 10.0


def bind(host: str, port: int, *, listen: bool) -> socket.socket:
    """A ``SO_REUSEPORT`` socket on ``host:port`` (port 0: pick one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
        sock.setblocking(False)
    return sock


def _worker_main(config: Config, port: int, number: int) -> None:
    """Body of one worker process."""
    sock = bind(config.host, port, listen=True)
    logging.getLogger("pipgate").info("worker %d started", number)
    web.run_app(
        create_app(config, reconcile_cache=False),
        sock=sock,
        print=None,
        access_log_format='%a "%r" %s %b %Tfs pid=%P',
    )


def serve_workers(config: Config) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; returns the exit status."""
    # Bound but not listening: it reserves the port and receives no connections.
    reservation = bind(config.host, config.port, listen=False)
    port = reservation.getsockname()[1]
    reconcile(config.cache_dir)
    context = multiprocessing.get_context("fork")
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(number: int) -> None:
        proc = context.Process(
            target=_worker_main, args=(config, port, number), name=f"pipgate-worker-{number}"
        )
        proc.start()
        workers[number] = proc

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for number in range(config.workers):
        start(number)
    log.info("supervising %d workers on %s:%d", config.workers, config.host, port)
    try:
        while not stopping:
            for number, proc in list(workers.items()):
                if not proc.is_alive() and not stopping:
                    log.error("worker %d exited with %s; restarting", number, proc.exitcode)
                    time.sleep(RESTART_DELAY)
                    start(number)
            time.sleep(0.2)
    finally:
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for proc in workers.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        reservation.close()
    return 0
