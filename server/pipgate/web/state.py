"""The services the web layer calls, stored on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pipgate.config import Config
from pipgate.failures import FailureLog
from pipgate.file_service import FileService
from pipgate.index_service import IndexService
from pipgate.metrics import Metrics
from pipgate.page_render import PageRenderer
from pipgate.root_list import RootListService
from pipgate.store.blobs import BlobStore
from pipgate.store.evict import Evictor
from pipgate.upstream.client import UpstreamClient


@dataclass(frozen=True)
class Services:
    """Everything a request handler may need; built once at start-up."""

    config: Config
    metrics: Metrics
    client: UpstreamClient
    pages: IndexService
    root: RootListService
    files: FileService
    blobs: BlobStore
    renderer: PageRenderer
    evictor: Evictor
    failures: FailureLog


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    """The services of the app serving ``request``."""
    return request.app[SERVICES]
