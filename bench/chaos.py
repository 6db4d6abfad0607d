"""Chaos: installs in a loop while the upstream misbehaves and pipgate is killed.

Everything runs on 127.0.0.1. ``bench/upstream.py`` serves generated projects and
spoils a fraction of its responses (``--faults``: connection resets, truncated bodies,
corrupted bytes, 5xx, stalls, bodies running past their size); ``pipgate serve
--workers 2`` runs in front of it with short upstream timeouts. Clients loop until the
end: real ``pip install --no-cache-dir --no-deps --target`` and ``uv pip install
--no-cache --no-deps --target`` of generated wheels (each install is checked file by
file), and raw HTTP downloads of pages and wheels (whole or a ``Range``) hashed while
they stream. Meanwhile pipgate is SIGKILLed and restarted on the same port and cache,
alternately the whole process group and a single worker. A client may fail during
faults (failures are counted by cause) but must never get a wrong complete file, and
every client operation has a timeout: one that expires is a hang. At the end the
faults stop, every client kind must succeed again (recovery), pipgate is stopped and
``pipgate verify --json`` must find every cached blob intact. See ``bench/README.md``.

Run: ``python bench/chaos.py [--duration 300] [--faults 0.2] [--short] [--json F]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import HOST, BenchError, HttpError, git_describe, output_arguments, pipgate_origin
from load import (
    FakeUpstream,
    PipgateServer,
    fetch_page,
    file_url,
    log_problems,
    machine,
    main_with,
    page_request,
    parse_env,
)
from upstream import WheelMaker, gen_filename, gen_project, gen_size_kib, gen_version

#: pipgate settings for chaos: short upstream timeouts so stalls turn into retries and
#: resumes within a client's patience, pages that expire fast so revalidation meets the
#: faults too, and a short down cool-down.
SERVER_ENV = {
    "PIPGATE_CONNECT_TIMEOUT": "2s",
    "PIPGATE_READ_TIMEOUT": "2s",
    "PIPGATE_PAGE_TIMEOUT": "10s",
    "PIPGATE_RETRIES": "2",
    "PIPGATE_RETRY_MAX_TIME": "8s",
    "PIPGATE_INDEX_TTL": "5s",
    "PIPGATE_DOWN_COOLDOWN": "3s",
}
#: Wheel sizes (KiB) of the projects the clients install.
SIZES = (20, 200, 2000, 6000)
#: A socket read (raw clients) or pip/uv request that waits longer than this is a hang;
#: pipgate's worst case without bytes is a few read timeouts plus backoff (~8 s).
IO_TIMEOUT = 20.0
#: The longest one client operation (an install, a download) may take.
OP_TIMEOUT = 90.0


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Tally:
    """What one kind of client did."""

    attempted: int = 0
    succeeded: int = 0
    #: Failure cause -> count (a plain dict: ``asdict`` mangles a Counter).
    failed: dict[str, int] = field(default_factory=dict)
    #: Wrong complete files or installs (must stay empty) and hangs (likewise).
    wrong: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)
    longest_s: float = 0.0
    #: Successes that needed a resume (Range + If-Range) after a cut.
    resumed: int = 0

    def add(self, outcome: str, seconds: float, detail: str = "") -> None:
        """Count one operation: ``ok``, ``wrong``, ``hang`` or a failure cause."""
        self.attempted += 1
        self.longest_s = max(self.longest_s, round(seconds, 2))
        if outcome in ("ok", "ok_resumed"):
            self.succeeded += 1
            if outcome == "ok_resumed":
                self.resumed += 1
        elif outcome == "wrong":
            self.wrong.append(detail)
        elif outcome == "hang":
            self.hangs.append(detail)
        else:
            self.failed[outcome] = self.failed.get(outcome, 0) + 1
            self.examples.setdefault(outcome, detail[-300:])


class Targets:
    """What clients ask for: a fixed set of projects (cached soon, so their pages
    expire and revalidate under faults) and fresh ones (new downloads under faults)."""

    def __init__(self, maker: WheelMaker, versions: int, token: str, seed: int) -> None:
        self.maker = maker
        self.versions = versions
        self.token = token
        self.stable = [gen_project(size, f"s{i}") for size in SIZES for i in range(2)]
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fresh = 0

    def pick(self, fresh_share: float) -> tuple[str, str]:
        """(project, version): a fresh project with probability ``fresh_share``."""
        with self._lock:
            if self._rng.random() < fresh_share:
                self._fresh += 1
                size = self._rng.choice(SIZES)
                project = gen_project(size, f"{self.token}{self._fresh}")
            else:
                project = self._rng.choice(self.stable)
            return project, gen_version(self._rng.randrange(self.versions))


# --- clients ---------------------------------------------------------------------------------


def classify_pip(text: str) -> str:
    """A failure cause from pip's output."""
    low = text.lower()
    for needle, cause in (
        ("do not match the hashes", "wrong"),
        ("badzipfile", "wrong"),
        ("bad crc", "wrong"),
        ("read timed out", "hang"),
        ("timed out", "hang"),
        ("connection refused", "server_down"),
        ("newconnectionerror", "server_down"),
        ("incompleteread", "body_cut"),
        ("not enough bytes", "body_cut"),
        ("connection broken", "body_cut"),
        ("remotedisconnected", "body_cut"),
        ("no matching distribution", "no_matching_distribution (a page failed)"),
        ("503", "http_503"),
        ("502", "http_502"),
        ("500", "http_500"),
        ("404", "http_404"),
    ):
        if needle in low:
            return cause
    return "other"


def classify_uv(text: str) -> str:
    """A failure cause from uv's output."""
    low = text.lower()
    for needle, cause in (
        ("hash mismatch", "wrong"),
        ("timed out", "hang"),
        ("timeout", "hang"),
        ("connection refused", "server_down"),
        ("tcp connect error", "server_down"),
        ("503", "http_503"),
        ("502", "http_502"),
        ("500", "http_500"),
        ("404", "http_404"),
        ("was not found in the package registry", "not_found (a page failed)"),
        ("error decoding response body", "body_cut"),
        ("end of file", "body_cut"),
        ("connection reset", "body_cut"),
        ("connection closed", "body_cut"),
        ("zip", "body_cut (broken stream)"),
        ("failed to fetch", "fetch_failed"),
    ):
        if needle in low:
            return cause
    return "other"


def check_install(target: Path, maker: WheelMaker, project: str, version: str) -> str | None:
    """Why the installed files differ from the wheel's, or None when they are right."""
    size = gen_size_kib(project)
    assert size is not None
    wheel = maker.wheel(project, version)
    info = target / f"{project.replace('-', '_')}-{version}.dist-info"
    try:
        metadata = (info / "METADATA").read_bytes()
        payload = (target / maker.payload_name(size)).read_bytes()
    except OSError as exc:
        return f"missing file: {exc}"
    if metadata != wheel.metadata:
        return "METADATA differs from the wheel's"
    if hashlib.sha256(payload).hexdigest() != maker.payload_sha256(size):
        return "payload differs from the wheel's"
    return None


def run_installer(
    kind: str, index_url: str, workdir: Path, maker: WheelMaker, project: str, version: str
) -> tuple[str, str]:
    """One ``pip install`` or ``uv pip install`` into a fresh target: (outcome, detail)."""
    target = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    spec = f"{project}=={version}"
    if kind == "pip":
        argv = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps"]
        argv += ["--disable-pip-version-check", "--no-input", "--root-user-action=ignore"]
        argv += ["--target", str(target), "--index-url", index_url]
        argv += ["--timeout", f"{IO_TIMEOUT:g}", "--retries", "2", spec]
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    else:
        argv = [shutil.which("uv") or "uv", "pip", "install", "--no-cache", "--no-deps"]
        argv += ["--target", str(target), "--python", sys.executable]
        argv += ["--index-url", index_url, spec]
        env = {**os.environ, "UV_HTTP_TIMEOUT": f"{IO_TIMEOUT:g}", "UV_NO_CONFIG": "1"}
        env["UV_HTTP_RETRIES"] = "2"
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=OP_TIMEOUT, env=env, check=False
        )
        output = done.stdout + done.stderr
        if done.returncode == 0:
            if kind == "pip" and "readtimeouterror" in output.lower():
                return "hang", f"pip {spec} succeeded after a read timeout: {output[-300:]}"
            problem = check_install(target, maker, project, version)
            if problem:
                return "wrong", f"{kind} {spec}: installed, but {problem}"
            return "ok", ""
        cause = (classify_pip if kind == "pip" else classify_uv)(output)
        keep = 3000 if cause in ("wrong", "hang") else 400
        return cause, f"{kind} {spec}: {output.strip()[-keep:]}"
    except subprocess.TimeoutExpired:
        return "hang", f"{kind} install {spec}: no result after {OP_TIMEOUT:g} s"
    finally:
        shutil.rmtree(target, ignore_errors=True)


def raw_download(
    port: int, maker: WheelMaker, project: str, version: str, versions: int, rng: random.Random
) -> tuple[str, str]:
    """The page (JSON, must list the right hashes), then the wheel whole or from a random
    offset, hashed while streaming: (outcome, detail)."""
    page = page_request(maker, project, "json", versions)
    try:
        status, body = fetch_page(port, page, IO_TIMEOUT)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return _cause(exc), f"page of {project}: {exc!r}"
    if status != 200:
        return f"page_http_{status}", f"page of {project}: {status}"
    try:
        listed = {f["filename"]: f["hashes"]["sha256"] for f in json.loads(body)["files"]}
    except (ValueError, KeyError, TypeError):
        return "wrong", f"page of {project}: not a PEP 691 page: {body[:200]!r}"
    if listed != dict(page.listing):
        return "wrong", f"page of {project}: lists other files or hashes: {listed}"
    wheel = maker.wheel(project, version)
    path = file_url(project, wheel.sha256, gen_filename(project, version))
    offset = rng.randrange(wheel.size) if rng.random() < 0.25 else 0
    content = wheel.content()
    part = stream_get(port, path, {"Range": f"bytes={offset}-"} if offset else {})
    if part.error == "hang":
        return "hang", f"GET {path}: a read waited {IO_TIMEOUT:g} s"
    if part.status not in (200, 206):
        failed = part.error or f"http_{part.status}{':' + part.reason if part.reason else ''}"
        return failed, f"GET {path}: {part.detail}"
    if part.status != (206 if offset else 200):
        return "wrong", f"GET {path} (from {offset}): status {part.status}"
    resumed = ""
    if part.error is not None and part.etag and part.got:
        # Resume as pip does: the rest, guarded by the validator of the cut response.
        first = part
        at = offset + first.got
        rest = stream_get(port, path, {"Range": f"bytes={at}-", "If-Range": first.etag})
        if rest.error == "hang":
            return "hang", f"GET {path} (resuming at {at}): a read waited {IO_TIMEOUT:g} s"
        if rest.status == 206 and rest.error is None:
            part = first.joined(rest)
            resumed = f" (cut at byte {at}: {first.error}; resumed with If-Range {first.etag})"
        elif rest.status == 200 and rest.error is None and offset == 0:
            part = rest  # the server sent the whole file again: start over
        else:
            cause = first.error or "body_cut"
            return cause, f"GET {path}: {first.detail}; resume: {rest.status} {rest.error}"
    if part.error is not None:
        return part.error, f"GET {path}: {part.detail}"
    expected = hashlib.sha256(content[offset:]).hexdigest()
    if part.got != wheel.size - offset or part.sha256 != expected:
        # Complete by the response's own framing: wrong bytes.
        return "wrong", (
            f"{'RESUMED ' if resumed else ''}GET {path} (from {offset}){resumed}: "
            f"{part.got} bytes, sha256 {part.sha256}, expected {wheel.size - offset} bytes, "
            f"{expected}"
        )
    return ("ok_resumed" if resumed else "ok"), ""


@dataclass
class Part:
    """What one GET of a file delivered, cut or not."""

    status: int = 0
    reason: str = ""
    etag: str = ""
    #: Body bytes received, and their running sha256.
    got: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    #: Why the body is incomplete (a cause), or None when it is complete.
    error: str | None = None
    detail: str = ""
    #: The body itself, kept only for a resume (to hash it after the cut part).
    body: bytes = b""

    @property
    def sha256(self) -> str:
        return str(self.digest.hexdigest())

    def joined(self, rest: Part) -> Part:
        """This part followed by ``rest`` (a 206 from where this one was cut)."""
        digest = self.digest.copy()
        digest.update(rest.body)
        return Part(self.status, self.reason, self.etag, self.got + rest.got, digest)


def stream_get(port: int, path: str, headers: dict[str, str]) -> Part:
    """GET ``path`` on a fresh connection, hashing the body as it streams; a cut body
    returns what arrived (``error`` says why). Every read times out after IO_TIMEOUT."""
    part = Part()
    conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
    keep = "Range" in headers and "If-Range" in headers
    kept: list[bytes] = []
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "gzip", **headers})
        response = conn.getresponse()
        part.status = response.status
        part.reason = response.headers.get("X-Pipgate-Reason", "")
        part.etag = response.headers.get("ETag", "")
        length = response.headers.get("Content-Length")
        while block := response.read1(1 << 20):
            part.got += len(block)
            part.digest.update(block)
            if keep:
                kept.append(block)
        if length is not None and part.got < int(length):
            part.error, part.detail = "body_cut", f"{part.got} of {length} bytes"
    except TimeoutError:
        part.error = "hang"
    except (OSError, http.client.HTTPException) as exc:
        part.error, part.detail = _cause(exc), f"after {part.got} bytes: {exc!r}"
    finally:
        conn.close()
    part.body = b"".join(kept)
    return part


def _cause(exc: BaseException) -> str:
    """A failure cause from a client exception (a timeout is a hang)."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason  # urllib wraps what went wrong
    if isinstance(exc, ConnectionRefusedError):
        return "server_down"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, HttpError):
        return "closed_before_response" if "status line" in str(exc) else "body_cut"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed_before_response"
    if isinstance(exc, http.client.IncompleteRead):
        return "body_cut"
    if isinstance(exc, gzip.BadGzipFile | EOFError):
        return "wrong"  # a complete page (by its framing) that does not decode
    if isinstance(exc, TimeoutError):
        return "hang"
    return f"error_{type(exc).__name__}"


class Client(threading.Thread):
    """One client looping until told to stop; every operation is tallied."""

    def __init__(self, name: str, op: Callable[[], tuple[str, str]], tally: Tally) -> None:
        super().__init__(name=name, daemon=True)
        self.op = op
        self.tally = tally
        self.stop = threading.Event()
        self.busy_since: float | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            self.busy_since = started = time.monotonic()
            try:
                outcome, detail = self.op()
            except Exception as exc:  # a bug in the client itself: make it visible
                outcome, detail = "client_error", repr(exc)
            self.busy_since = None
            self.tally.add(outcome, time.monotonic() - started, detail)
            if outcome not in ("ok", "ok_resumed"):
                self.stop.wait(0.2)  # do not spin while the server is down


# --- the killer ------------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL and how long pipgate took to be whole again."""

    t: float
    what: str  # group, worker
    recovered_s: float
    ok: bool
    detail: str = ""


def kill_once(server: PipgateServer, what: str, t0: float) -> Kill:
    """SIGKILL the whole group (then start pipgate again) or one worker (the supervisor
    must replace it); wait until every worker is up."""
    started = time.monotonic()
    t = round(started - t0, 1)
    try:
        if what == "group":
            server.kill_group()
            server.start(timeout=60)
        else:
            workers = server.worker_pids()
            if not workers:
                return Kill(t, what, 0.0, False, "no worker to kill")
            victim = random.choice(workers)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while True:
                now = server.worker_pids()
                if victim not in now and len(now) >= server.workers:
                    break
                if time.monotonic() > deadline or not server.alive():
                    return Kill(t, what, 30.0, False, f"worker {victim} not replaced: {now}")
                time.sleep(0.1)
        return Kill(t, what, round(time.monotonic() - started, 2), True)
    except (BenchError, OSError) as exc:
        return Kill(t, what, round(time.monotonic() - started, 2), False, str(exc)[:300])


# --- the run ---------------------------------------------------------------------------------


def verify_cache(python: str, cache_dir: Path) -> dict[str, Any]:
    """``pipgate verify --json`` on the cache: exit status and report."""
    argv = [python, "-m", "pipgate", "verify", "--json", "--cache-dir", str(cache_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"unparsed": done.stdout[-500:], "stderr": done.stderr[-500:]}
    return {"status": done.returncode, "report": report}


def recover(
    port: int, index_url: str, workdir: Path, maker: WheelMaker, targets: Targets
) -> list[str]:
    """With the faults off: each client kind must succeed, within 75 s (a file that
    failed verification in the last minute is refused that long). Problems, if any."""
    problems: list[str] = []
    rng = random.Random(3)
    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = []
    for project in targets.stable:
        raw = partial(raw_download, port, maker, project, gen_version(0), targets.versions, rng)
        checks.append((f"raw {project}", raw))
    for kind in ("pip", "uv"):
        project, version = targets.pick(0.5)
        install = partial(run_installer, kind, index_url, workdir, maker, project, version)
        checks.append((f"{kind} {project}=={version}", install))
    deadline = time.monotonic() + 75
    for name, check in checks:
        while True:
            outcome, detail = check()
            if outcome in ("ok", "ok_resumed"):
                break
            if outcome in ("wrong", "hang") or time.monotonic() > deadline:
                problems.append(f"recovery {name}: {outcome} {detail[-300:]}")
                break
            time.sleep(1)
    return problems


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start everything, run clients and kills for ``--duration`` s, then check."""
    origin = pipgate_origin(args.python)
    maker = WheelMaker()
    token = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))
    targets = Targets(maker, args.versions, "f" + token, args.seed)
    faults = [f"--faults={args.faults}", f"--seed={args.seed}", f"--stall={args.stall}"]
    upstream = FakeUpstream(workdir, versions=args.versions, extra=faults)
    server = PipgateServer(
        workdir,
        upstream.index_url,
        workers=args.workers,
        python=args.python,
        env={**SERVER_ENV, **dict(args.server_env)},
    )
    tallies = {"pip": Tally(), "uv": Tally(), "raw": Tally()}
    kills: list[Kill] = []
    clients: list[Client] = []
    problems: list[str] = []
    try:
        server.start()
        log(f"pipgate from {origin}: {server.processes()}; faults {args.faults}")
        index_url = server.base + "/simple/"
        for i in range(args.pip):
            clients.append(
                Client(
                    f"pip-{i}",
                    lambda: run_installer(
                        "pip", index_url, workdir, maker, *targets.pick(args.fresh)
                    ),
                    tallies["pip"],
                )
            )
        for i in range(args.uv):
            clients.append(
                Client(
                    f"uv-{i}",
                    lambda: run_installer(
                        "uv", index_url, workdir, maker, *targets.pick(args.fresh)
                    ),
                    tallies["uv"],
                )
            )
        for i in range(args.raw):
            rng = random.Random(100 + i)

            def download(rng: random.Random = rng) -> tuple[str, str]:
                project, version = targets.pick(args.fresh)
                return raw_download(server.port, maker, project, version, args.versions, rng)

            clients.append(Client(f"raw-{i}", download, tallies["raw"]))
        t0 = time.monotonic()
        for client in clients:
            client.start()
        kill_times = [args.duration * (k + 1) / (args.kills + 1) for k in range(args.kills)]
        for number, at in enumerate(kill_times):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            what = "group" if number % 2 == 0 else "worker"
            kill = kill_once(server, what, t0)
            kills.append(kill)
            failed = "" if kill.ok else f" FAILED: {kill.detail}"
            log(f"t={kill.t:.0f} s: killed {what}, whole again in {kill.recovered_s} s{failed}")
            if not kill.ok:
                problems.append(f"{what} kill at t={kill.t} s: {kill.detail}")
                if not server.alive():
                    server.start(timeout=60)
        time.sleep(max(0.0, t0 + args.duration - time.monotonic()))
        upstream.set_faults(0.0)
        log("faults off; waiting for the clients to finish what they are doing")
        for client in clients:
            client.stop.set()
        deadline = time.monotonic() + OP_TIMEOUT + 10
        for client in clients:
            client.join(max(0.1, deadline - time.monotonic()))
            if client.is_alive():
                problems.append(f"client {client.name} still busy after {OP_TIMEOUT:g} s")
        injected = upstream.stats()["faults"]["injected"]
        log(f"recovery checks; faults injected: {sum(injected.values())}")
        problems += recover(server.port, index_url, workdir, maker, targets)
        if not server.alive():
            problems.append("pipgate is not running at the end")
        server.stop()
        verify = verify_cache(args.python, server.cache_dir)
        blobs = sum(1 for p in (server.cache_dir / "blobs").rglob("*") if p.is_file())
        log(f"pipgate verify: exit {verify['status']} ({blobs} blobs)")
        logged = log_problems(server.log_text())
        command = " ".join(server.argv[1:]).replace(str(workdir), "$WORKDIR")
    finally:
        for client in clients:
            client.stop.set()
        server.stop()
        upstream.stop()
    report = verify["report"]
    corrupt = report.get("corrupt", []) if isinstance(report, dict) else ["unparsed"]
    if verify["status"] != 0 or corrupt:
        problems.append(f"pipgate verify: exit {verify['status']}, corrupt {corrupt[:5]}")
    for name, tally in tallies.items():
        problems += [f"{name}: WRONG: {w}" for w in tally.wrong]
        problems += [f"{name}: HANG: {h}" for h in tally.hangs]
    if not any(t.succeeded for t in tallies.values()):
        problems.append("no client operation succeeded during the chaos")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pipgate_command": command,
        "pipgate_env": {**SERVER_ENV, **dict(args.server_env)},
        "pipgate_module": origin,
        "git": git_describe(),
        "machine": machine(),
        "config": {
            "duration_s": args.duration,
            "faults": args.faults,
            "stall_s": args.stall,
            "fresh": args.fresh,
            "clients": {"pip": args.pip, "uv": args.uv, "raw": args.raw},
            "kills": args.kills,
            "io_timeout_s": IO_TIMEOUT,
            "op_timeout_s": OP_TIMEOUT,
        },
        "clients": {name: asdict(t) for name, t in tallies.items()},
        "kills": [asdict(k) for k in kills],
        "faults_injected": dict(sorted(injected.items())),
        "verify": {"status": verify["status"], "blobs": blobs, "corrupt": corrupt},
        "server_log": dict(logged.kinds.most_common()),
        "problems": problems,
        "passed": not problems,
    }


def report(result: dict[str, Any]) -> str:
    """The results as text, ending with the verdict line."""
    config = result["config"]
    lines = [
        f"pipgate chaos {result['date']}  ({result['machine']['cpus']} CPUs; "
        f"{config['duration_s']} s, faults {config['faults']:g} of upstream responses, "
        f"stalls {config['stall_s']:g} s, clients {config['clients']})",
        f"pipgate from {result['pipgate_module']} ({result['git']})",
        "",
        f"{'client':<6} {'attempted':>9} {'ok':>5} {'failed':>6} {'wrong':>5} {'hangs':>5} "
        f"{'longest s':>9}  failures by cause",
    ]
    for name, t in result["clients"].items():
        failed = sum(t["failed"].values())
        causes = ", ".join(f"{k}={v}" for k, v in sorted(t["failed"].items())) or "-"
        lines.append(
            f"{name:<6} {t['attempted']:>9} {t['succeeded']:>5} {failed:>6} {len(t['wrong']):>5} "
            f"{len(t['hangs']):>5} {t['longest_s']:>9}  {causes}"
        )
    kills = result["kills"]
    groups = [k for k in kills if k["what"] == "group"]
    workers = [k for k in kills if k["what"] == "worker"]
    lines += [
        "",
        f"kills: {len(groups)} of the whole group (restart to all workers up: "
        f"{', '.join(str(k['recovered_s']) for k in groups) or '-'} s), {len(workers)} of one "
        f"worker (replaced in {', '.join(str(k['recovered_s']) for k in workers) or '-'} s)",
        "faults injected: "
        + (", ".join(f"{k}={v}" for k, v in result["faults_injected"].items()) or "none"),
        f"pipgate verify --json: exit {result['verify']['status']}, {result['verify']['blobs']} "
        f"blobs, corrupt {len(result['verify']['corrupt'])}",
    ]
    if result["server_log"]:
        lines.append("pipgate logged (warnings and errors by kind):")
        lines += [f"  {n:>5} {k[:150]}" for k, n in result["server_log"].items()]
    lines += [f"problem: {p[:400]}" for p in result["problems"]]
    wrong = sum(len(t["wrong"]) for t in result["clients"].values())
    hangs = sum(len(t["hangs"]) for t in result["clients"].values())
    verdict = "PASS" if result["passed"] else "FAIL"
    clean = result["verify"]["status"] == 0 and not result["verify"]["corrupt"]
    operations = sum(t["attempted"] for t in result["clients"].values())
    resumed = sum(w.startswith("RESUMED") for t in result["clients"].values() for w in t["wrong"])
    if wrong:
        lines.append(
            f"wrong complete files: {wrong} ({resumed} assembled by resuming a cut response "
            "with Range + If-Range)"
        )
    lines.append(
        f"chaos: {verdict} ({operations} client operations, {wrong} wrong files, {hangs} "
        f"hangs, {len(kills)} kills, verify {'clean' if clean else 'NOT clean'}, "
        f"{len(result['problems'])} problems)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=300, help="s of chaos (300)")
    parser.add_argument("--faults", type=float, default=0.2, help="spoilt share (0.2)")
    parser.add_argument("--stall", type=float, default=4.0, help="s a stall lasts (4)")
    parser.add_argument("--kills", type=int, default=16, help="kills, alternating group/worker")
    parser.add_argument("--pip", type=int, default=1, help="pip clients (1)")
    parser.add_argument("--uv", type=int, default=1, help="uv clients (1)")
    parser.add_argument("--raw", type=int, default=3, help="raw HTTP clients (3)")
    parser.add_argument(
        "--fresh", type=float, default=0.4, help="share of never-seen projects (0.4)"
    )
    parser.add_argument("--versions", type=int, default=3, help="wheels per project (3)")
    parser.add_argument("--workers", type=int, default=2, help="pipgate --workers (2)")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs pipgate (this one)"
    )
    parser.add_argument(
        "--server-env",
        type=parse_env,
        action="append",
        default=[],
        metavar="PIPGATE_X=V",
        help="extra pipgate setting (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the faults and picks")
    parser.add_argument(
        "--short", action="store_true", help="the CI form: 30 s, 4 kills, 2 raw clients"
    )
    output_arguments(parser, timeout=1200, markdown=False)
    return parser


def main() -> int:
    """Parse the command line and run; exit 0 (pass), 1 (a check failed), 2 (could not
    run)."""
    args = build_parser().parse_args()
    if args.short:
        args.duration, args.kills, args.raw = 30, 4, 2
    if shutil.which("uv") is None and args.uv:
        log("uv not found: no uv clients")
        args.uv = 0
    return main_with("chaos", args, run, report)


if __name__ == "__main__":
    sys.exit(main())

