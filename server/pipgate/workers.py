"""``--workers N``: N processes serving one port, sharing one cache.

The supervisor reserves the port, reconciles the cache once, then forks the workers.
Each worker listens on its own ``SO_REUSEPORT`` socket bound to that port, so the
kernel spreads connections evenly over the workers (a single shared listening socket
lets one busy worker take most of them). Cross-process coordination
(one upstream download per file, eviction, scrubbing) goes through file locks in the
cache directory (:mod:`pipgate.store.locks`), which a killed worker releases by dying.
A worker that exits unexpectedly is restarted; SIGTERM/SIGINT stop them all; SIGHUP
is passed on, so each worker reloads its policy.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess, values

from pipgate.app import create_app
from pipgate.config import Config
from pipgate.store.reconcile import reconcile
from pipgate.web.serving import bind, run

log = logging.getLogger("pipgate.workers")

#: Seconds between restarts of a crashing worker (so a crash loop does not spin).
RESTART_DELAY = 1.0
#: Seconds the workers get to finish after SIGTERM before they are killed.
STOP_GRACE = 10.0


def _worker_main(
    config: Config,
    port: int,
    number: int,
    metrics_dir: Path,
    reload_config: Callable[[], Config] | None,
) -> None:
    """Body of one worker process."""
    # prometheus-client picks its value storage when the module is imported; the
    # supervisor imported it before PROMETHEUS_MULTIPROC_DIR was set, so choose again.
    values.ValueClass = values.get_value_class()
    sock = bind(config.host, port, listen=True)
    logging.getLogger("pipgate").info("worker %d started", number)
    app = create_app(
        config, reconcile_cache=False, multiprocess_dir=metrics_dir, reload_config=reload_config
    )
    run(app, config, sock)


def serve_workers(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT (SIGHUP is passed on to them:
    each reloads its policy); returns the exit status."""
    # Bound but not listening: it reserves the port and receives no connections.
    reservation = bind(config.host, config.port, listen=False)
    port = reservation.getsockname()[1]
    reconcile(config.cache_dir)
    metrics_dir = _fresh_metrics_dir(config.cache_dir)
    # Inherited by the workers: their metrics go to files one scrape sums up.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    context = multiprocessing.get_context("fork")
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(number: int) -> None:
        proc = context.Process(
            target=_worker_main,
            args=(config, port, number, metrics_dir, reload_config),
            name=f"pipgate-worker-{number}",
        )
        proc.start()
        workers[number] = proc

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def hang_up(signum: int, frame: FrameType | None) -> None:
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hang_up)
    for number in range(config.workers):
        start(number)
    log.info("supervising %d workers on %s:%d", config.workers, config.host, port)
    try:
        while not stopping:
            for number, proc in list(workers.items()):
                if not proc.is_alive() and not stopping:
                    log.error("worker %d exited with %s; restarting", number, proc.exitcode)
                    if proc.pid is not None:
                        multiprocess.mark_process_dead(proc.pid, str(metrics_dir))
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


def _fresh_metrics_dir(cache_dir: Path) -> Path:
    """An empty directory for this run's multiprocess metric files."""
    directory = cache_dir / "metrics"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory
