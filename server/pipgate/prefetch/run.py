"""``pipgate prefetch``: warm the cache with what a project needs, for every target.

Prefetch is a client of pipgate: it runs an in-process pipgate on loopback over the
configured cache (or uses a running one, ``--server URL``), so every file takes the
normal verified download path: one upstream download per file, the hash check, the
commit, the policy. Requirements (files, constraints, names with specifiers) are
resolved per target by uv (``uv pip compile --python-version --python-platform``)
through that pipgate; lock files need no resolver: every file they list is fetched and
checked against the hash they record. For each target and pinned version the wheel the
target's installer would pick is fetched, or the sdist when there is none.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

import aiohttp
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from pipgate.config import Config
from pipgate.policy.rules import file_version
from pipgate.prefetch.locks import LockFileError, read_lock
from pipgate.targets import Target, choose_files

JSON = "application/vnd.pypi.simple.v1+json"
#: Files downloaded at once.
DEFAULT_JOBS = 4
#: Longest a single resolution may take.
RESOLVE_TIMEOUT = 900.0
#: Longest wait between two chunks of a file (pipgate may be fetching it upstream).
READ_TIMEOUT = 300.0
USER_AGENT = "pipgate-prefetch"


class PrefetchError(ValueError):
    """Input that cannot be used (a missing file, a bad lock file, no uv)."""


@dataclass
class Want:
    """One file to have in the cache."""

    project: str
    filename: str
    url: str
    sha256: str | None
    size: int | None
    #: Target labels (or lock files) that need it.
    reasons: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    """What happened to one wanted file."""

    project: str
    filename: str
    #: ``fetched``, ``cached`` or ``failed``.
    status: str
    bytes: int = 0
    #: A failure reason from pipgate's closed set (``hash_mismatch``, ``http_4xx``…).
    reason: str | None = None
    detail: str | None = None


@dataclass
class Report:
    """Everything prefetch did, for the summary and ``--json``."""

    outcomes: list[Outcome] = field(default_factory=list)
    #: Resolutions that failed: ``target: what uv said``.
    unresolved: list[str] = field(default_factory=list)
    #: Lock-file packages without index files (vcs, directories, archives).
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unresolved

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "fetched": sum(o.status == "fetched" for o in self.outcomes),
            "cached": sum(o.status == "cached" for o in self.outcomes),
            "failed": len(self.failed),
            "bytes": sum(o.bytes for o in self.outcomes if o.status == "fetched"),
            "files": [o.__dict__ for o in self.outcomes],
            "unresolved": self.unresolved,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


class Progress(Protocol):
    """Where progress goes: a live bar on a terminal, plain lines otherwise."""

    def start(self, files: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def done(self, outcome: Outcome) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Inputs:
    """What to prefetch."""

    requirements: Sequence[Path] = ()
    constraints: Sequence[Path] = ()
    locks: Sequence[Path] = ()
    #: Requirement strings (``requests>=2.31``).
    specs: Sequence[str] = ()


async def prefetch(
    config: Config,
    inputs: Inputs,
    targets: Sequence[Target],
    progress: Progress,
    *,
    server: str | None = None,
    jobs: int = DEFAULT_JOBS,
) -> Report:
    """Prefetch ``inputs`` for ``targets`` into ``config``'s cache (or ``server``'s)."""
    started = time.monotonic()
    report = Report()
    _check(inputs)
    async with (
        _pipgate(config, server) as index_url,
        aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=READ_TIMEOUT),
        ) as session,
    ):
        pages = _Pages(session, index_url)
        wants: dict[str, Want] = {}
        if inputs.requirements or inputs.specs:
            for target in targets:
                pins = await _resolve(inputs, target, index_url, report)
                for name, version in pins:
                    await _add_pinned(pages, wants, name, version, target, report)
        for path in inputs.locks:
            await _add_locked(pages, wants, path, report)
        progress.start(len(wants), sum(w.size or 0 for w in wants.values()))
        limit = asyncio.Semaphore(max(1, jobs))

        async def one(want: Want) -> None:
            async with limit:
                outcome = await _fetch(session, index_url, want, progress)
            report.outcomes.append(outcome)
            progress.done(outcome)

        await asyncio.gather(*(one(w) for w in wants.values()))
    progress.close()
    report.outcomes.sort(key=lambda o: (o.project, o.filename))
    report.seconds = time.monotonic() - started
    return report


def _check(inputs: Inputs) -> None:
    for path in (*inputs.requirements, *inputs.constraints, *inputs.locks):
        if not path.is_file():
            raise PrefetchError(f"{path}: no such file")
    for spec in inputs.specs:
        try:
            Requirement(spec)
        except InvalidRequirement as exc:
            raise PrefetchError(f"{spec!r}: not a requirement ({exc})") from None
    if not (inputs.requirements or inputs.specs or inputs.locks):
        raise PrefetchError("nothing to prefetch: give -r FILE, a lock file or project names")


@asynccontextmanager
async def _pipgate(config: Config, server: str | None) -> AsyncIterator[str]:
    """The index URL to use: ``server``'s, or an in-process pipgate's on loopback."""
    if server is not None:
        yield server.rstrip("/") + "/simple/"
        return
    from aiohttp import web

    from pipgate.app import create_app

    # Every page is revalidated upstream (cheaply, with its validators): prefetch must see
    # what upstream has now, not what the page cache remembers.
    fresh = replace(config, index_ttl=0.0, negative_ttl=0.0)
    runner = web.AppRunner(create_app(fresh), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/simple/"
    finally:
        await runner.cleanup()


class _Pages:
    """Project pages as JSON, from the index prefetch uses, fetched once each."""

    def __init__(self, session: aiohttp.ClientSession, index_url: str) -> None:
        self._session = session
        self._index = index_url
        self._pages: dict[str, dict[str, Any] | str] = {}

    async def get(self, project: str) -> tuple[dict[str, Any] | None, str]:
        """The page and its URL, or ``None`` and why."""
        url = f"{self._index}{project}/"
        if project not in self._pages:
            # max-age=0: pipgate revalidates with upstream (new releases are seen).
            headers = {"Accept": JSON, "Cache-Control": "max-age=0"}
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 200:
                    self._pages[project] = await resp.json(content_type=None)
                else:
                    why = resp.headers.get("X-Pipgate-Reason") or f"http_{resp.status // 100}xx"
                    self._pages[project] = f"{why}: {(await resp.text()).strip()[:200]}"
        page = self._pages[project]
        return (page, url) if isinstance(page, dict) else (None, page)


async def _resolve(
    inputs: Inputs, target: Target, index_url: str, report: Report
) -> list[tuple[str, str]]:
    """The pins ``uv pip compile`` resolves for ``target`` through pipgate."""
    uv = _uv()
    with tempfile.TemporaryDirectory(prefix="pipgate-prefetch-") as work:
        sources = [str(p) for p in inputs.requirements]
        if inputs.specs:
            specs = Path(work) / "requirements.in"
            specs.write_text("".join(f"{s}\n" for s in inputs.specs))
            sources.append(str(specs))
        cmd = [
            uv,
            "pip",
            "compile",
            "--no-config",
            "--no-header",
            "--no-annotate",
            "--quiet",
            "--python",
            sys.executable,
            "--python-version",
            target.python,
            "--python-platform",
            target.uv_platform(),
            "--index-url",
            index_url,
            "--cache-dir",
            str(Path(work) / "uv-cache"),
            *sources,
            *(arg for c in inputs.constraints for arg in ("--constraint", str(c))),
        ]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("UV_", "PIP_")) and k.lower() not in ("http_proxy", "https_proxy")
        }
        env.update(target.uv_environment())
        env["UV_PYTHON_DOWNLOADS"] = "never"
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), RESOLVE_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            report.unresolved.append(f"{target.label}: resolution took over {RESOLVE_TIMEOUT}s")
            return []
    if proc.returncode != 0:
        message = " ".join(line.strip() for line in err.decode(errors="replace").splitlines())
        report.unresolved.append(f"{target.label}: {message[:500] or 'uv failed'}")
        return []
    return _pins(out.decode())


def _pins(text: str) -> list[tuple[str, str]]:
    """``(project, version)`` of every ``name==version`` line uv wrote."""
    pins: list[tuple[str, str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line.split(" --hash", 1)[0].strip())
        except InvalidRequirement:
            continue
        exact = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
        if exact:
            pins.append((canonicalize_name(requirement.name), exact[0]))
    return pins


def _uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise PrefetchError(
                "resolving requirements needs uv: pip install 'pipgate[prefetch]' "
                "(lock files need no resolver)"
            ) from None
        return found


async def _add_pinned(
    pages: _Pages,
    wants: dict[str, Want],
    project: str,
    version: str,
    target: Target,
    report: Report,
) -> None:
    """The file(s) ``target`` installs for ``project==version``."""
    page, url = await pages.get(project)
    if page is None:
        report.outcomes.append(
            Outcome(
                project, f"{project}=={version}", "failed", reason=url.split(":")[0], detail=url
            )
        )
        return
    files = {f["filename"]: f for f in page.get("files", []) if _same(f["filename"], version)}
    chosen = choose_files(files, target)
    if not chosen:
        report.outcomes.append(
            Outcome(
                project,
                f"{project}=={version}",
                "failed",
                reason="http_4xx",
                detail=f"no file of {project} {version} for {target.label}",
            )
        )
        return
    for filename in chosen:
        _want(wants, project, files[filename], url, target.label)


def _same(filename: str, version: str) -> bool:
    """Whether ``filename`` is a file of ``version`` (PEP 440 equality: 1.0 == 1.0.0)."""
    parsed = file_version(filename)
    try:
        return parsed is not None and parsed == Version(version)
    except InvalidVersion:
        return False


async def _add_locked(pages: _Pages, wants: dict[str, Want], path: Path, report: Report) -> None:
    """Every file a lock file lists, checked against the index page."""
    try:
        contents = await asyncio.to_thread(read_lock, path)
    except LockFileError as exc:
        raise PrefetchError(str(exc)) from None
    report.skipped.extend(f"{path.name}: {s}" for s in contents.skipped)
    for locked in contents.files:
        page, url = await pages.get(locked.project)
        entry = None
        if page is not None:
            entry = next(
                (f for f in page.get("files", []) if f["filename"] == locked.filename), None
            )
        if entry is None:
            why = url if page is None else f"not on the page of {locked.project}"
            report.outcomes.append(
                Outcome(locked.project, locked.filename, "failed", reason="http_4xx", detail=why)
            )
            continue
        published = (entry.get("hashes") or {}).get("sha256")
        recorded = locked.hashes.get("sha256")
        if recorded and published and recorded.lower() != published.lower():
            report.outcomes.append(
                Outcome(
                    locked.project,
                    locked.filename,
                    "failed",
                    reason="hash_mismatch",
                    detail=f"{path.name} records another sha256 than the index publishes",
                )
            )
            continue
        _want(wants, locked.project, entry, url, path.name)


def _want(
    wants: dict[str, Want], project: str, entry: dict[str, Any], page_url: str, why: str
) -> None:
    url = urljoin(page_url, entry["url"]).partition("#")[0]
    want = wants.get(url)
    if want is None:
        sha = (entry.get("hashes") or {}).get("sha256")
        size = entry.get("size") if isinstance(entry.get("size"), int) else None
        want = wants[url] = Want(project, entry["filename"], url, sha, size)
    want.reasons.add(why)


async def _fetch(
    session: aiohttp.ClientSession, index_url: str, want: Want, progress: Progress
) -> Outcome:
    """Have pipgate serve the file once (it downloads, verifies and commits it)."""
    try:
        async with session.head(want.url) as head:
            if head.status == 200 and head.headers.get("X-Pipgate-Cache") == "hit":
                progress.advance(want.size or 0)
                return Outcome(want.project, want.filename, "cached", bytes=want.size or 0)
        digest = hashlib.sha256()
        received = 0
        async with session.get(want.url, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status != 200:
                reason = resp.headers.get("X-Pipgate-Reason") or f"http_{resp.status // 100}xx"
                detail = (await resp.text()).strip()[:300]
                return Outcome(want.project, want.filename, "failed", reason=reason, detail=detail)
            async for chunk in resp.content.iter_chunked(1 << 20):
                digest.update(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        reason = await _reason_of(session, index_url, want) or "truncated"
        return Outcome(want.project, want.filename, "failed", reason=reason, detail=str(exc))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Outcome(want.project, want.filename, "failed", reason="connect", detail=str(exc))
    if want.sha256 and digest.hexdigest() != want.sha256.lower():
        return Outcome(
            want.project, want.filename, "failed", received, "hash_mismatch", "sha256 differs"
        )
    return Outcome(want.project, want.filename, "fetched", bytes=received)


async def _reason_of(session: aiohttp.ClientSession, index_url: str, want: Want) -> str | None:
    """Why pipgate cut a download short (it says so in ``/-/failures``)."""
    root = index_url.removesuffix("simple/")
    try:
        async with session.get(f"{root}-/failures?limit=50") as resp:
            listed = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError, TimeoutError):
        return None
    for failure in listed.get("failures", []):
        if failure.get("file") == want.filename:
            return str(failure.get("reason"))
    return None


# --- output ---------------------------------------------------------------------------------


class Lines:
    """Progress as plain lines (not a terminal: CI logs)."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self._stream = stream
        self._files = 0
        self._done = 0

    def start(self, files: int, total_bytes: int) -> None:
        self._files = files
        print(f"prefetching {files} files ({_mib(total_bytes)} known)", file=self._stream)

    def advance(self, nbytes: int) -> None:
        pass

    def done(self, outcome: Outcome) -> None:
        self._done += 1
        extra = f" ({_mib(outcome.bytes)})" if outcome.status == "fetched" else ""
        why = f": {outcome.reason}" if outcome.reason else ""
        print(
            f"[{self._done}/{self._files}] {outcome.status} {outcome.filename}{extra}{why}",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        pass


class Bar:
    """Progress as a live bar: files and bytes, with a rate (rich)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.fields[files]}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task: Any = None
        self._files = 0
        self._done = 0

    def start(self, files: int, total_bytes: int) -> None:
        self._files = files
        self._progress.start()
        self._task = self._progress.add_task(
            "prefetch", total=total_bytes or None, files=f"0/{files} files"
        )

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def done(self, outcome: Outcome) -> None:
        self._done += 1
        self._progress.update(self._task, files=f"{self._done}/{self._files} files")
        if outcome.status == "failed":
            self._progress.console.print(f"[red]failed[/red] {outcome.filename}: {outcome.reason}")

    def close(self) -> None:
        self._progress.stop()


def summary(report: Report) -> str:
    """The closing table: fetched, already cached, failed by reason; then the failures."""
    rows = [
        ("fetched", [o for o in report.outcomes if o.status == "fetched"]),
        ("already cached", [o for o in report.outcomes if o.status == "cached"]),
        ("failed", report.failed),
    ]
    lines = [f"{'':<16}{'files':>7}{'size':>12}"]
    for label, outcomes in rows:
        size = sum(o.bytes for o in outcomes)
        lines.append(f"{label:<16}{len(outcomes):>7}{_mib(size):>12}")
    by_reason: dict[str, int] = {}
    for outcome in report.failed:
        by_reason[outcome.reason or "other"] = by_reason.get(outcome.reason or "other", 0) + 1
    for reason, count in sorted(by_reason.items()):
        lines.append(f"  {reason:<14}{count:>7}")
    for outcome in report.failed:
        lines.append(
            f"failed: {outcome.filename}: {outcome.reason}: {outcome.detail or ''}".rstrip(": ")
        )
    for line in report.unresolved:
        lines.append(f"unresolved: {line}")
    for line in report.skipped:
        lines.append(f"skipped: {line}")
    lines.append(f"in {report.seconds:.1f} s")
    return "\n".join(lines)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
