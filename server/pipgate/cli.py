"""Command line: ``pipgate serve`` (more subcommands join here)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipgate import __version__, logs
from pipgate.app import create_app
from pipgate.config import SETTINGS, Config, ConfigError, load_config
from pipgate.config.values import parse_specifier
from pipgate.doctor import report, run_doctor, succeeded
from pipgate.errors import UpstreamError
from pipgate.policy import commands
from pipgate.policy.osv import OsvError
from pipgate.policy.quarantine import QuarantineError
from pipgate.policy.rules import entries_as_json
from pipgate.redact import redact_url
from pipgate.simple.names import normalize
from pipgate.store.integrity import verify_cache
from pipgate.web import auth, serving
from pipgate.workers import serve_workers

log = logging.getLogger("pipgate")


#: The umask of every pipgate command (so of everything it writes in the cache).
CACHE_UMASK = 0o027


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag of a setting defaults to "not given"."""
    parser = argparse.ArgumentParser(prog="pipgate", description="A caching, verifying PyPI proxy.")
    parser.add_argument("--version", action="version", version=f"pipgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the proxy in the foreground")
    _add_config_flags(serve)
    verify = commands.add_parser(
        "verify",
        help="re-hash every cached file and report corrupt ones",
        description="Exit status: 0 clean (unverified files alone are fine), 1 corrupt files "
        "found and removed by --repair, 2 configuration error or no cache, 3 corrupt or "
        "unreadable files remain.",
    )
    _add_config_flags(verify)
    verify.add_argument("--repair", action="store_true", help="remove corrupt files")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    doctor = commands.add_parser(
        "doctor",
        help="check each step of the path to upstream and say what to fix",
        description="Exit status 0 only when every step passes.",
    )
    _add_config_flags(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument(
        "--project", default="pip", help="project whose page and smallest file are fetched"
    )
    doctor.add_argument(
        "--upstream-name",
        metavar="NAME",
        help="check only the upstream with this name (default: each in turn)",
    )
    _add_quarantine(commands)
    explain = commands.add_parser(
        "explain",
        help="which versions of a project install in an environment, and why the others do not",
        description="From the cache and, unless --offline, upstream. Exit status 0 when a "
        "version installs, 1 when none does, 2 bad input or no such project.",
    )
    _add_config_flags(explain)
    explain.add_argument("project")
    explain.add_argument("spec", nargs="?", help="a version specifier, e.g. '>=2.16'")
    explain.add_argument(
        "--python", nargs="+", action="extend", default=[], metavar="VERSION",
        help="Python versions, e.g. 3.13 (default: this one)",
    )  # fmt: skip
    explain.add_argument(
        "--platform", nargs="+", action="extend", default=[], metavar="TAG",
        help="platform tags, e.g. musllinux_1_2_x86_64 (default: this one)",
    )  # fmt: skip
    explain.add_argument(
        "--from-user-agent", metavar="UA", help="the environment a pip or uv User-Agent names"
    )
    explain.add_argument("--json", action="store_true", help="machine-readable report")
    prefetch = commands.add_parser(
        "prefetch",
        help="warm the cache with what requirements or lock files need, for every target",
        description="Exit status 0 everything is cached, 1 something failed or did not "
        "resolve, 2 bad input.",
    )
    _add_config_flags(prefetch)
    prefetch.add_argument(
        "items",
        nargs="*",
        metavar="SPEC|LOCKFILE",
        help="requirements like 'requests>=2.31', or lock files (pylock.toml, uv.lock, "
        "poetry.lock, pdm.lock)",
    )
    prefetch.add_argument(
        "-r", "--requirement", action="append", default=[], type=Path, metavar="FILE"
    )
    prefetch.add_argument(
        "-c", "--constraint", action="append", default=[], type=Path, metavar="FILE"
    )
    prefetch.add_argument("--lock", action="append", default=[], type=Path, metavar="FILE")
    prefetch.add_argument(
        "--python",
        nargs="+",
        action="extend",
        default=[],
        metavar="VERSION",
        help="target Python versions, e.g. 3.10 3.11 (default: this one)",
    )
    prefetch.add_argument(
        "--platform",
        nargs="+",
        action="extend",
        default=[],
        metavar="TAG",
        help="target platforms, e.g. manylinux_2_28_x86_64 win_amd64 (default: this one)",
    )
    prefetch.add_argument("--server", metavar="URL", help="a running pipgate (default: in-process)")
    prefetch.add_argument("--jobs", type=int, default=4, help="downloads at once (default 4)")
    prefetch.add_argument("--json", action="store_true", help="machine-readable report")
    export = commands.add_parser(
        "export",
        help="write the cache as a static simple repository (to carry across an air gap)",
        description="What an offline pipgate would serve, policy applied. Exit status 0 "
        "written, 2 bad input.",
    )
    _add_config_flags(export)
    export.add_argument("dest", type=Path, metavar="DIR", help="directory to write")
    export.add_argument(
        "--project", action="append", default=[], help="only this project (repeatable)"
    )
    export.add_argument(
        "--since", type=Path, metavar="MANIFEST", help="leave out files an earlier export has"
    )
    export.add_argument("--archive", action="store_true", help="write DIR as one tar file")
    export.add_argument("--json", action="store_true", help="machine-readable report")
    imp = commands.add_parser(
        "import",
        help="load an export into this cache, verifying every file",
        description="Exit status 0 all imported, 1 some files refused or missing, 2 not an export.",
    )
    _add_config_flags(imp)
    imp.add_argument("source", type=Path, metavar="DIR|ARCHIVE")
    imp.add_argument(
        "--upstream-name",
        metavar="NAME",
        help="whose cached pages they become (default: the first)",
    )
    imp.add_argument("--json", action="store_true", help="machine-readable report")
    audit = commands.add_parser(
        "audit",
        help="who downloaded what, and when (the audit trail)",
        description="Lists recorded file and metadata responses, oldest first; also for "
        "files that have left the cache. Exit status 0 (also when nothing matches).",
    )
    _add_config_flags(audit)
    audit.add_argument("--project", help="a project name")
    audit.add_argument("--version", dest="versions", metavar="SPEC", help="e.g. ==1.82.7")
    audit.add_argument("--sha256", help="a file's sha256")
    audit.add_argument("--since", help="a date or time, e.g. 2026-11-01 or 2026-11-01T08:00Z")
    audit.add_argument("--user", help="the user a client authenticated as")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    _add_admin_commands(commands)
    return parser


def _add_admin_commands(commands: Any) -> None:
    """The cache operations the admin API also offers (``pipgate.admin``)."""
    purge = commands.add_parser(
        "purge",
        help="forget a project's cached pages (the next request asks upstream)",
        description="A running server notices within seconds. Exit status 0 (also when "
        "nothing was cached), 2 bad input.",
    )
    _add_config_flags(purge)
    purge.add_argument("project")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    remove = commands.add_parser(
        "remove",
        help="delete a cached file: by SHA256, or by PROJECT FILENAME (and its metadata)",
        description="Files being sent, or stored in the last minute, are left (as eviction "
        "leaves them). Exit status 0 removed, 1 not cached or not removed, 2 bad input.",
    )
    _add_config_flags(remove)
    remove.add_argument("file", nargs="+", metavar="SHA256 | PROJECT FILENAME")
    remove.add_argument("--json", action="store_true", help="machine-readable output")
    failures = commands.add_parser(
        "failures",
        help="the recent failed fetches with every detail, newest first",
        description="The list behind /-/admin/failures (at most 200 kept). Exit status 0.",
    )
    _add_config_flags(failures)
    failures.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    failures.add_argument("--json", action="store_true", help="machine-readable output")


def _add_quarantine(commands: Any) -> None:
    quarantine = commands.add_parser(
        "quarantine",
        help="take projects or versions out of service (at once, in every worker)",
        description="The list lives in the cache directory; a running server applies a "
        "change within a second, without a restart.",
    )
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="quarantine PROJECT, PROJECT==VERSION or PROJECT<SPEC>")
    add.add_argument("target", metavar="PROJECT[SPEC]")
    add.add_argument("--reason", required=True, help="why (shown to whoever is refused)")
    add.add_argument("--purge", action="store_true", help="also delete cached copies")
    listing = actions.add_parser("list", help="show the quarantine list")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    remove = actions.add_parser("remove", help="lift a quarantine (PROJECT alone: all of it)")
    remove.add_argument("target", metavar="PROJECT[SPEC]")
    osv = actions.add_parser(
        "import-osv",
        help="quarantine what OSV records name (a JSON file, a directory, or a zip)",
    )
    osv.add_argument("path", type=Path)
    osv.add_argument("--purge", action="store_true", help="also delete cached copies")
    for parser in (add, listing, remove, osv):
        _add_config_flags(parser)
        if parser is not listing:
            parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (env PIPGATE_CONFIG)"
    )
    for setting in SETTINGS:
        if setting.switch:
            parser.add_argument(
                setting.option,
                dest=setting.name,
                action="store_const",
                const="true",
                default=None,
                help=f"{setting.help} (env {setting.env_var}, toml {setting.toml_key})",
            )
        elif setting.flag:
            parser.add_argument(
                setting.option,
                dest=setting.name,
                default=None,
                metavar=setting.metavar or setting.name.upper(),
                help=f"{setting.help} (env {setting.env_var}, toml {setting.toml_key})",
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipgate`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    # Cached pages of private indexes, the audit trail and the quarantine list are no
    # business of other local users: files 0640, directories 0750, whoever starts us.
    os.umask(CACHE_UMASK)
    try:
        config = load_config(
            config_file=args.config,
            env=os.environ,
            flags={s.name: getattr(args, s.name, None) for s in SETTINGS if s.flag},
        )
    except ConfigError as exc:
        print(f"pipgate: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        flags = {s.name: getattr(args, s.name, None) for s in SETTINGS if s.flag}

        def reload_config() -> Config:
            return load_config(config_file=args.config, env=os.environ, flags=flags)

        return serve(config, reload_config)
    if args.command == "quarantine":
        return quarantine(config, args)
    if args.command == "audit":
        return audit(config, args)
    if args.command in ("purge", "remove", "failures"):
        return admin_command(config, args)
    if args.command == "prefetch":
        return prefetch(config, args)
    if args.command == "explain":
        return explain_command(config, args)
    if args.command == "export":
        return export(config, args)
    if args.command == "import":
        return import_(config, args)
    if args.command == "verify":
        return verify(config, repair=args.repair, as_json=args.json)
    if args.command == "doctor":
        return doctor(config, project=args.project, upstream=args.upstream_name, as_json=args.json)
    return 2


def doctor(config: Config, *, project: str, upstream: str | None, as_json: bool) -> int:
    """``pipgate doctor``: 0 when every step of the path works, 1 otherwise."""
    steps = asyncio.run(run_doctor(config, project=project, upstream=upstream))
    if as_json:
        print(json.dumps({"ok": succeeded(steps), "steps": [s.to_json() for s in steps]}, indent=2))
    else:
        print(report(steps))
    return 0 if succeeded(steps) else 1


def verify(config: Config, *, repair: bool, as_json: bool) -> int:
    """``pipgate verify``: re-hash the cache (fsck-like exit status)."""
    interactive = sys.stderr.isatty()

    def progress(line: str) -> None:
        print(f"\r{line}", end="", file=sys.stderr, flush=True)

    try:
        report = verify_cache(
            config.cache_dir, repair=repair, progress=progress if interactive else None
        )
    except FileNotFoundError:
        print(f"pipgate: no cache directory at {config.cache_dir}", file=sys.stderr)
        return 2
    if interactive:
        print(file=sys.stderr)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    remaining = [c for c in report.corrupt if not c.removed]
    if remaining:
        return 3
    return 1 if report.corrupt else 0


def quarantine(config: Config, args: argparse.Namespace) -> int:
    """``pipgate quarantine add|list|remove|import-osv``: 0 done, 1 failed, 2 bad input."""
    try:
        if args.action == "list":
            entries = commands.listing(config)
            if args.json:
                print(commands.as_json(entries_as_json(entries)))
            else:
                print(commands.format_entries(entries))
            return 0
        if args.action == "add":
            result = commands.add(config, args.target, args.reason, do_purge=args.purge)
            text = (
                f"quarantined {args.target} ({'new' if result['added'] else 'updated'}); "
                f"{result['total']} entries"
            )
        elif args.action == "remove":
            result = commands.remove(config, args.target)
            text = f"removed {result['removed']} entries; {result['total']} left"
        else:
            result = commands.import_osv(config, args.path, do_purge=args.purge)
            text = (
                f"{result['records']} records: {result['added']} entries added, "
                f"{result['removed']} lifted, {result['total']} in the list"
                + (
                    f"; {result['skipped']} records without PyPI versions"
                    if result["skipped"]
                    else ""
                )
            )
    except (ValueError, QuarantineError, OsvError) as exc:
        print(f"pipgate: quarantine: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pipgate: quarantine: {exc}", file=sys.stderr)
        return 1
    purged = result.get("purged")
    if args.json:
        print(commands.as_json(result))
    else:
        print(text)
        if isinstance(purged, dict):
            print(f"purged {len(purged['files'])} cached files", end="")
            print(f"; {len(purged['in_use'])} in use, left" if purged["in_use"] else "")
    return 0


def audit(config: Config, args: argparse.Namespace) -> int:
    """``pipgate audit``: the recorded downloads that match."""
    from pipgate.admin import audit_rows

    try:
        rows = audit_rows(
            config,
            project=args.project,
            versions=args.versions,
            sha256=args.sha256,
            since=args.since,
            user=args.user,
        )
    except ValueError as exc:
        print(f"pipgate: audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"downloads": rows}, indent=2))
        return 0
    if not rows:
        print("no recorded downloads match")
        return 0
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["time"]))
        who = f"{row['installer']}/{row['installer_version'] or '?'} py{row['python'] or '?'}"
        got = "complete" if row["complete"] else "incomplete"
        print(
            f"{when}  {row['client']:<15}  {row['user'] or '-':<12}  {who:<22}  "
            f"{row['project']} {row['filename']}  "
            f"{row['status']} {row['result']} {got} {row['bytes']} B"
            + (f"  {row['reason']}" if row["reason"] else "")
        )
    return 0


def admin_command(config: Config, args: argparse.Namespace) -> int:
    """``pipgate purge|remove|failures``: the admin API's operations from a shell."""
    from pipgate import admin

    try:
        if args.command == "purge":
            result: Any = admin.purge_pages(config, args.project)
            text = (
                f"purged the cached pages of {result['project']} "
                f"({', '.join(result['purged'])})"
                if result["purged"]
                else f"no cached pages of {result['project']} in upstreams "
                f"{', '.join(u.name for u in config.upstreams)} (the server's configuration?)"
            )
            status = 0
        elif args.command == "remove":
            if len(args.file) == 1:
                removal = admin.remove_file(config, sha256=args.file[0])
            elif len(args.file) == 2:
                removal = admin.remove_file(config, project=args.file[0], filename=args.file[1])
            else:
                raise ValueError("give a SHA256, or a PROJECT and a FILENAME")
            result = removal.to_json()
            lines = [f"removed {e['filename'] or e['sha256']}" for e in removal.removed]
            lines += [f"in use, left: {e['filename'] or e['sha256']}" for e in removal.in_use]
            lines += [
                f"stored less than a minute ago, left: {e['filename'] or e['sha256']}"
                for e in removal.too_new
            ]
            text = "\n".join(lines)
            status = 0 if removal.removed else 1
        else:
            failures = admin.recent_failures(config, args.limit)
            result = {"failures": [f.to_json() for f in failures]}
            text = "\n".join(
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(f.time))}  {f.reason:<13} "
                f"upstream={f.upstream} proxy={f.proxy or '-'} project={f.project or '-'} "
                f"file={f.file or '-'}  {f.detail}"
                for f in failures
            ) or "no failures recorded"
            status = 0
    except admin.NoSuchFile as exc:
        print(f"pipgate: {args.command}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"pipgate: {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else text)
    return status


def explain_command(config: Config, args: argparse.Namespace) -> int:
    """``pipgate explain PROJECT [SPEC]``."""
    from pipgate.compat import environment, from_client
    from pipgate.explain import explain
    from pipgate.targets import parse_targets
    from pipgate.useragent import parse_user_agent

    try:
        if args.from_user_agent:
            env = from_client(parse_user_agent(args.from_user_agent))
            if env is None:
                raise ValueError("the User-Agent names no CPython environment pipgate can read")
            envs = [env]
        else:
            envs = [
                environment(t.python, t.platform) for t in parse_targets(args.python, args.platform)
            ]
        if args.spec:
            parse_specifier(args.spec)
        results = asyncio.run(explain(config, normalize(args.project), envs, args.spec))
    except ValueError as exc:
        print(f"pipgate: explain: {exc}", file=sys.stderr)
        return 2
    except UpstreamError as exc:
        print(f"pipgate: explain: {exc.reason.value}: {exc.detail}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print("\n\n".join("\n".join(r.lines()) for r in results))
    return 0 if all(r.newest_installable for r in results) else 1


def prefetch(config: Config, args: argparse.Namespace) -> int:
    """``pipgate prefetch``."""
    from pipgate.prefetch import run
    from pipgate.prefetch.locks import is_lock_filename
    from pipgate.targets import parse_targets

    locks = list(args.lock)
    specs = []
    for item in args.items:
        path = Path(item)
        if is_lock_filename(path.name):
            locks.append(path)
        else:
            specs.append(item)
    try:
        targets = parse_targets(args.python, args.platform)
        inputs = run.Inputs(args.requirement, args.constraint, locks, specs)
        progress: run.Progress = run.Bar() if sys.stderr.isatty() and not args.json else run.Lines()
        report = asyncio.run(
            run.prefetch(config, inputs, targets, progress, server=args.server, jobs=args.jobs)
        )
    except (ValueError, run.PrefetchError) as exc:
        print(f"pipgate: prefetch: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else run.summary(report))
    return 0 if report.ok else 1


def export(config: Config, args: argparse.Namespace) -> int:
    """``pipgate export DIR``."""
    from pipgate.transfer.export import DirectoryWriter, TarWriter, export_cache

    since = None
    if args.since is not None:
        try:
            since = json.loads(args.since.read_text())
        except (OSError, ValueError) as exc:
            print(f"pipgate: export: --since {args.since}: {exc}", file=sys.stderr)
            return 2
    if not (config.cache_dir / "catalog").is_dir():
        print(f"pipgate: export: no cache at {config.cache_dir}", file=sys.stderr)
        return 2
    writer = TarWriter(args.dest) if args.archive else DirectoryWriter(args.dest)
    report = asyncio.run(
        export_cache(config, writer, projects=[normalize(p) for p in args.project], since=since)
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(
            f"exported {report.projects} projects, {report.files} files "
            f"({report.bytes / (1 << 20):.1f} MiB) to {args.dest}"
            + (f"; {report.skipped_known} already exported" if report.skipped_known else "")
        )
        for line in report.left_out:
            print(f"  left out: {line}")
    return 0


def import_(config: Config, args: argparse.Namespace) -> int:
    """``pipgate import DIR|ARCHIVE``."""
    from pipgate.transfer.imports import ExportUnreadable, import_export

    try:
        report = import_export(config, args.source, upstream=args.upstream_name)
    except ExportUnreadable as exc:
        print(f"pipgate: import: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(
            f"imported {report.files} files ({report.files_present} already here) and "
            f"{report.pages} pages ({report.pages_unchanged} unchanged)"
        )
        for line in report.refused:
            print(f"  refused: {line}")
        for line in report.missing:
            print(f"  missing: {line}")
    return 0 if report.ok else 1


def fleet_problem(config: Config) -> str | None:
    """Why the configured shared store or coordination cannot be used (one line), or
    ``None``; a Redis that is just unreachable is no problem (replicas fall back)."""
    if config.storage_kind == "disk" and config.coordination_kind == "local":
        return None
    from pipgate.fleet.build import FleetError, preflight

    try:
        asyncio.run(preflight(config))
    except FleetError as exc:
        return str(exc)
    return None


def serve(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """Run the server until interrupted (SIGHUP reloads the policy)."""
    logs.setup(config.log_level, config.log_format, buffered=True)
    try:
        config.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"pipgate: cache.dir {config.cache_dir}: cannot create ({exc})", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):  # not ours (a shared mount): leave it as it is
        # Closes a cache made world-readable by an earlier umask, without a walk.
        config.cache_dir.chmod(0o750)
    serving.raise_open_file_limit()
    serving.limit_malloc_arenas()
    # Checked before the start-up line, so that a bad file is the only line printed.
    try:
        serving.tls_context(config)  # a bad certificate stops the server here, once
    except serving.TLSError as exc:
        print(f"pipgate: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        auth.load_read_credentials(config)  # so does a bad credential file
    except auth.AuthFileError as exc:
        print(f"pipgate: configuration error: {exc}", file=sys.stderr)
        return 2
    problem = fleet_problem(config)  # a bucket that ignores create-only writes stops here
    if problem is not None:
        print(f"pipgate: {problem}", file=sys.stderr)
        return 2
    log.info(
        "pipgate %s on %s://%s:%d/simple/ upstreams=%s cache=%s workers=%d",
        __version__,
        "https" if config.tls_cert else "http",
        config.host,
        config.port,
        ", ".join(f"{u.name}={redact_url(u.url)}" for u in config.upstreams),
        config.cache_dir,
        config.workers,
    )
    try:
        if config.workers > 1:
            return serve_workers(config, reload_config)
        sock = serving.bind(config.host, config.port, listen=True)
    except OSError as exc:
        print(f"pipgate: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    serving.run(create_app(config, reload_config=reload_config), config, sock)
    return 0
