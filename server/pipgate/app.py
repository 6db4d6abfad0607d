"""Builds the aiohttp application: services, routes, middlewares, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from pipgate.config import Config
from pipgate.failures import FailureLog
from pipgate.file_service import FileService
from pipgate.index_service import IndexService
from pipgate.metrics import Metrics
from pipgate.page_render import PageRenderer
from pipgate.root_list import RootListService
from pipgate.store.blobs import BlobStore
from pipgate.store.downloads import DownloadManager
from pipgate.store.evict import Evictor
from pipgate.store.index import Index
from pipgate.store.integrity import Scrubber
from pipgate.store.reconcile import reconcile
from pipgate.upstream.client import UpstreamClient
from pipgate.web import files, middleware, ops, pages
from pipgate.web.state import SERVICES, Services

log = logging.getLogger("pipgate")


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
        blobs = BlobStore(config.cache_dir)
        if reconcile_cache:
            await asyncio.to_thread(reconcile, config.cache_dir)
        else:
            await asyncio.to_thread(blobs.ensure_dirs)
        index = Index(config.cache_dir)
        failures = FailureLog(config.cache_dir)
        client = UpstreamClient(config, metrics, failures)
        await client.start()
        downloads = DownloadManager(blobs, client, metrics)
        evictor = Evictor(index, blobs, config.max_size, metrics)
        evictor.request()  # sets the size gauges, evicts if max_size shrank
        scrubber = Scrubber(config.cache_dir, index, blobs, metrics, config.scrub_rate)
        scrub_task = asyncio.create_task(scrubber.run(), name="scrub")
        index_service = IndexService(config, index, client, metrics)
        root = RootListService(config, index, client, metrics)
        app[SERVICES] = Services(
            config=config,
            metrics=metrics,
            client=client,
            pages=index_service,
            root=root,
            files=FileService(index, blobs, downloads, index_service, client, metrics, evictor),
            blobs=blobs,
            renderer=PageRenderer(),
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
            await root.close()
            await client.close()
            index.close()
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
