"""Builds the aiohttp application: services, routes, middlewares, start-up and shutdown.

The page pipeline is assembled here, innermost first: one
:class:`~pipgate.pages.upstream.UpstreamPages` per configured upstream, the
:class:`~pipgate.pages.router.Router` over them, then the filters that wrap it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from pipgate.audit import AuditLog
from pipgate.config import Config, ConfigError
from pipgate.failures import FailureLog, FailureReporter
from pipgate.files.metadata import DerivedMetadata
from pipgate.files.service import FileService
from pipgate.fleet.build import build_fleet
from pipgate.fleet.evict import SharedEvictor
from pipgate.fleet.pages import SharedPages
from pipgate.fleet.quarantine import QuarantineSync
from pipgate.incompatible import IncompatibleLog
from pipgate.limits import DownloadSlots, PageFetchLimiter
from pipgate.metrics import Metrics
from pipgate.pages.bodies import ListRenderer, PageRenderer
from pipgate.pages.metadata import MetadataInjector
from pipgate.pages.offline import CachedFilesOnly, CachedPages
from pipgate.pages.router import Router
from pipgate.pages.routing import RoutingTable
from pipgate.pages.source import PageSource
from pipgate.pages.upstream import UpstreamPages, list_dir_name
from pipgate.policy.filter import NO_UPSTREAM, PolicyFilter, PolicyState
from pipgate.policy.quarantine import QuarantineStore, QuarantineWatcher
from pipgate.policy.rules import QuarantineEntry
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import Catalog
from pipgate.store.downloads import DownloadManager
from pipgate.store.evict import Evictor
from pipgate.store.integrity import Scrubber
from pipgate.store.reconcile import reconcile
from pipgate.upstream.registry import Upstreams
from pipgate.web import admin, auth, files, hot_path, middleware, ops, pages, setup
from pipgate.web import fleet as fleet_web
from pipgate.web.hot_pages import HotFiles, HotPages
from pipgate.web.state import SERVICES, Services

log = logging.getLogger("pipgate")


def build_pages(
    config: Config,
    upstreams: Upstreams,
    catalog: Catalog,
    blobs: BlobStore,
    metrics: Metrics,
    reporter: FailureReporter,
    policy: PolicyState,
    derived: DerivedMetadata,
    shared: SharedPages | None = None,
) -> PolicyFilter:
    """The page pipeline for ``config``, innermost first: a source per upstream (or,
    offline, the cached pages of each), the router, what is cached (offline), the
    metadata pipgate can derive, the policy."""
    lists = config.cache_dir / "lists"
    # One budget of upstream page fetches for the worker, over all upstreams.
    fetches = PageFetchLimiter(config.page_fetch_rate, config.client_page_fetch_rate, metrics)
    sources: dict[str, PageSource] = {
        client.name: (
            CachedPages(
                client.name,
                catalog,
                lists / list_dir_name(client.name),
                synthesize_upload_time=client.config.synthesize_upload_time,
            )
            if config.offline
            else UpstreamPages(config, client, catalog, metrics, reporter, fetches, shared)
        )
        for client in upstreams
    }
    table = RoutingTable(upstreams.names, config.routes)
    pages: PageSource = Router(sources, table, lists / "union", metrics)
    if config.offline:
        pages = CachedFilesOnly(pages, blobs, catalog)
    pages = MetadataInjector(pages, derived)
    return PolicyFilter(pages, policy, reporter, metrics)


@dataclass
class Standalone:
    """The page pipeline without a web server (``explain``, ``export``)."""

    pages: PolicyFilter
    catalog: Catalog
    blobs: BlobStore
    derived: DerivedMetadata
    upstreams: Upstreams

    async def close(self) -> None:
        await self.pages.close()
        await self.upstreams.close()
        self.catalog.close()


async def standalone(config: Config) -> Standalone:
    """The pipeline for ``config`` on its cache; upstream clients started unless offline."""
    metrics = Metrics()
    catalog = Catalog(config.cache_dir)
    blobs = BlobStore(config.cache_dir)
    policy = PolicyState(config, QuarantineStore(config.cache_dir).load())
    derived = DerivedMetadata(blobs, catalog)
    upstreams = Upstreams(config, metrics)
    await upstreams.start()
    pages = build_pages(
        config, upstreams, catalog, blobs, metrics, FailureReporter(metrics), policy, derived
    )
    return Standalone(pages, catalog, blobs, derived, upstreams)


def create_app(
    config: Config,
    *,
    reconcile_cache: bool = True,
    multiprocess_dir: Path | None = None,
    reload_config: Callable[[], Config] | None = None,
) -> web.Application:
    """The pipgate application for ``config`` (services start with the app).

    Worker processes pass ``reconcile_cache=False`` (the supervisor reconciled the cache
    once before starting them) and the shared ``multiprocess_dir`` of the metrics.
    With ``reload_config``, SIGHUP reloads the policy from it (a real server does).
    """
    # The gate costs every request: it is there only when something is closed. Without
    # an admin token there are no admin routes (their URLs are 404s like any unknown).
    closed = config.htpasswd is not None or config.read_tokens is not None
    guarded = closed or config.admin_token is not None
    app = web.Application(middlewares=[middleware.observe, *([auth.guard] if guarded else [])])
    app.on_response_prepare.append(middleware.add_request_id)
    app[hot_path.ENABLED] = not guarded
    add_routes(app)
    if config.fleet_secret is not None:
        app.router.add_get("/-/fleet/blobs/{key}", fleet_web.blob, name="fleet_blob")
    auth.install(app, config)  # raises AuthFileError for a bad credential file
    if config.admin_token is not None:
        admin.install(app, reload_config=reload_config, supervised=multiprocess_dir is not None)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Everything started is stopped through one exit stack (last started, first
        # stopped), also when the start-up itself fails half way: a coordinator or a
        # shared store left running would keep the process from exiting.
        async with contextlib.AsyncExitStack() as stack:
            await _start_services(app, stack)
            yield

    async def _start_services(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
        metrics = Metrics(multiprocess_dir)
        metrics.cache_max_size.set(config.max_size)
        metrics.initialise_policy(NO_UPSTREAM)
        blobs = BlobStore(config.cache_dir)
        if reconcile_cache:
            await asyncio.to_thread(reconcile, config.cache_dir)
        else:
            await asyncio.to_thread(blobs.ensure_dirs)
        catalog = Catalog(
            config.cache_dir,
            max_negative=config.max_negative_entries,
            negative_retention=max(config.negative_ttl, config.max_stale),
        )
        stack.callback(catalog.close)
        failures = FailureLog(config.cache_dir)
        stack.callback(failures.close)
        reporter = FailureReporter(metrics, failures)
        stack.push_async_callback(reporter.drain)
        upstreams = Upstreams(config, metrics)
        stack.push_async_callback(upstreams.close)
        await upstreams.start()
        downloads = DownloadManager(blobs, metrics, max_file_size=config.max_file_size)
        slots = DownloadSlots(
            config.max_downloads, config.max_client_downloads, config.queue_timeout, metrics
        )
        evictor = Evictor(catalog, blobs, config.max_size, metrics)
        stack.push_async_callback(evictor.close)
        evictor.request()  # sets the size gauges, evicts if max_size shrank
        scrubber = Scrubber(config.cache_dir, catalog, blobs, metrics, config.scrub_rate)
        _background(stack, scrubber.run(), "scrub")
        audit = AuditLog(config.cache_dir, config.audit_retention)
        incompatible = IncompatibleLog(config.cache_dir, metrics)
        stack.push_async_callback(incompatible.close)
        _background(stack, audit.run(), "audit")
        quarantine = QuarantineStore(config.cache_dir)
        policy = PolicyState(config)
        hot_pages, hot_lists = HotPages(), HotFiles()
        policy.on_change(hot_pages.clear)  # a reload or a quarantine is in force at once
        derived = DerivedMetadata(blobs, catalog)
        fleet = build_fleet(config, blobs, metrics)
        stack.push_async_callback(fleet.close)
        await fleet.start()
        redis = config.coordination_kind == "redis"
        sync = QuarantineSync(fleet.coordinator, quarantine) if redis else None

        def quarantine_changed(entries: Sequence[QuarantineEntry]) -> None:
            policy.set_quarantine(entries)
            if sync is not None:
                sync.local_changed(entries)

        if fleet.shared is not None and config.shared_max_size:
            evicting = SharedEvictor(
                fleet.shared, fleet.coordinator, config.shared_max_size, metrics
            )
            _background(stack, evicting.run(), "shared-evict")
        watcher = QuarantineWatcher(quarantine, quarantine_changed)
        if sync is not None:
            stack.push_async_callback(sync.close)
            await sync.start(await asyncio.to_thread(quarantine.load))
        await asyncio.to_thread(watcher.load_now)
        _background(stack, watcher.run(), "quarantine-watch")
        shared_pages = SharedPages(fleet.coordinator, config.max_stale) if redis else None
        page_source = build_pages(
            config, upstreams, catalog, blobs, metrics, reporter, policy, derived, shared_pages
        )
        stack.push_async_callback(page_source.close)
        if reload_config is not None:
            _reload_on_sighup(policy, reload_config)
        file_service = FileService(
            page_source,
            upstreams,
            catalog,
            blobs,
            downloads,
            metrics,
            evictor,
            reporter,
            derived,
            slots,
            max_file_size=config.max_file_size,
            fleet=fleet,
        )
        stack.push_async_callback(file_service.close)
        stack.push_async_callback(downloads.close)
        app[SERVICES] = Services(
            config=config,
            metrics=metrics,
            upstreams=upstreams,
            pages=page_source,
            files=file_service,
            blobs=blobs,
            renderer=PageRenderer(),
            lists=ListRenderer(config.cache_dir / "pages"),
            evictor=evictor,
            failures=failures,
            audit=audit,
            incompatible=incompatible,
            policy=policy,
            hot_pages=hot_pages,
            hot_lists=hot_lists,
            fleet=fleet,
        )

    app.cleanup_ctx.append(lifecycle)
    return app


def _background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> None:
    """Run ``work`` until the stack closes (then it is cancelled and awaited)."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


def _reload_on_sighup(policy: PolicyState, reload_config: Callable[[], Config]) -> None:
    """SIGHUP: load the configuration file again and put its policy in force; a file
    with an error is refused, with the error, and the policy in force stays."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            fresh = await asyncio.to_thread(reload_config)
        except ConfigError as exc:
            log.error("configuration not reloaded, the policy in force stays: %s", exc)
            return
        running = policy.config
        if [(u.name, u.url) for u in fresh.upstreams] != [
            (u.name, u.url) for u in running.upstreams
        ] or fresh.routes != running.routes:
            log.warning("upstreams and routes change on restart only; reloading the policy")
        policy.set_config(fresh)
        log.info(
            "policy reloaded: %d rules, default %s", len(fresh.policy_rules), fresh.policy_default
        )

    def on_signal() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)


def add_routes(app: web.Application) -> None:
    """The URL map (route names are the ``route`` label of the request metrics)."""
    r = app.router
    r.add_get("/", ops.landing, name="landing")
    r.add_get("/healthz", ops.healthz, name="healthz")
    r.add_get("/readyz", ops.readyz, name="readyz")
    r.add_get("/metrics", ops.metrics, name="metrics")
    r.add_get("/-/failures", ops.failures, name="failures")
    r.add_get("/-/setup", setup.setup_page, name="setup")
    r.add_get("/simple", pages.simple_no_slash, name="simple_redirect")
    r.add_get("/simple/", pages.root, name="simple_root")
    r.add_get("/simple/{project}/", pages.project, name="simple_project")
    r.add_get("/simple/{project}", pages.project_no_slash, name="simple_redirect_project")
    r.add_get("/simple/{tail:.*}", pages.not_found, name="simple_other")
    r.add_get("/files/{project}/{key}/{filename}", files.file, name="file")
