"""Builds the aiohttp application: services, routes, middlewares, start-up and shutdown.

The page pipeline is assembled here, innermost first: one
:class:`~pipgate.pages.upstream.UpstreamPages` per configured upstream, the
:class:`~pipgate.pages.router.Router` over them, then the filters that wrap it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from pipgate.config import Config
from pipgate.failures import FailureLog, FailureReporter
from pipgate.files.service import FileService
from pipgate.metrics import Metrics
from pipgate.pages.bodies import ListRenderer, PageRenderer
from pipgate.pages.deny import NO_UPSTREAM, DenyList
from pipgate.pages.router import Router
from pipgate.pages.routing import RoutingTable
from pipgate.pages.source import PageSource
from pipgate.pages.upstream import UpstreamPages
from pipgate.store.blobs import BlobStore
from pipgate.store.catalog import Catalog
from pipgate.store.downloads import DownloadManager
from pipgate.store.evict import Evictor
from pipgate.store.integrity import Scrubber
from pipgate.store.reconcile import reconcile
from pipgate.upstream.registry import Upstreams
from pipgate.web import files, middleware, ops, pages
from pipgate.web.state import SERVICES, Services

log = logging.getLogger("pipgate")


def build_pages(
    config: Config,
    upstreams: Upstreams,
    catalog: Catalog,
    metrics: Metrics,
    reporter: FailureReporter,
) -> PageSource:
    """The page pipeline for ``config``."""
    sources = {
        client.name: UpstreamPages(config, client, catalog, metrics, reporter)
        for client in upstreams
    }
    table = RoutingTable(upstreams.names, config.routes)
    routed = Router(sources, table, config.cache_dir / "lists" / "union", metrics)
    return DenyList(routed, config.deny, reporter)


def create_app(
    config: Config, *, reconcile_cache: bool = True, multiprocess_dir: Path | None = None
) -> web.Application:
    """The pipgate application for ``config`` (services start with the app).

    Worker processes pass ``reconcile_cache=False`` (the supervisor reconciled the cache
    once before starting them) and the shared ``multiprocess_dir`` of the metrics.
    """
    app = web.Application(middlewares=[middleware.observe, middleware.errors])
    app.on_response_prepare.append(middleware.add_request_id)
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        metrics = Metrics(multiprocess_dir)
        metrics.cache_max_size.set(config.max_size)
        metrics.initialise_policy(NO_UPSTREAM)
        blobs = BlobStore(config.cache_dir)
        if reconcile_cache:
            await asyncio.to_thread(reconcile, config.cache_dir)
        else:
            await asyncio.to_thread(blobs.ensure_dirs)
        catalog = Catalog(config.cache_dir)
        failures = FailureLog(config.cache_dir)
        reporter = FailureReporter(metrics, failures)
        upstreams = Upstreams(config, metrics)
        await upstreams.start()
        downloads = DownloadManager(blobs, metrics)
        evictor = Evictor(catalog, blobs, config.max_size, metrics)
        evictor.request()  # sets the size gauges, evicts if max_size shrank
        scrubber = Scrubber(config.cache_dir, catalog, blobs, metrics, config.scrub_rate)
        scrub_task = asyncio.create_task(scrubber.run(), name="scrub")
        page_source = build_pages(config, upstreams, catalog, metrics, reporter)
        app[SERVICES] = Services(
            config=config,
            metrics=metrics,
            upstreams=upstreams,
            pages=page_source,
            files=FileService(
                page_source, upstreams, catalog, blobs, downloads, metrics, evictor, reporter
            ),
            blobs=blobs,
            renderer=PageRenderer(),
            lists=ListRenderer(config.cache_dir / "pages"),
            evictor=evictor,
            failures=failures,
        )
        try:
            yield
        finally:
            scrub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scrub_task
            await downloads.close()
            await evictor.close()
            await page_source.close()
            await upstreams.close()
            await reporter.drain()
            catalog.close()
            failures.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def add_routes(app: web.Application) -> None:
    """The URL map (route names are the ``route`` label of the request metrics)."""
    r = app.router
    r.add_get("/", ops.landing, name="landing")
    r.add_get("/healthz", ops.healthz, name="healthz")
    r.add_get("/readyz", ops.readyz, name="readyz")
    r.add_get("/metrics", ops.metrics, name="metrics")
    r.add_get("/-/failures", ops.failures, name="failures")
    r.add_get("/simple", pages.simple_no_slash, name="simple_redirect")
    r.add_get("/simple/", pages.root, name="simple_root")
    r.add_get("/simple/{project}/", pages.project, name="simple_project")
    r.add_get("/simple/{project}", pages.project_no_slash, name="simple_redirect_project")
    r.add_get("/simple/{tail:.*}", pages.not_found, name="simple_other")
    r.add_get("/files/{project}/{key}/{filename}", files.file, name="file")
