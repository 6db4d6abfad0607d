"""The services the web layer calls, stored on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pipgate.audit import AuditLog
from pipgate.config import Config
from pipgate.failures import FailureLog
from pipgate.files.service import FileService
from pipgate.fleet.fleet import Fleet
from pipgate.incompatible import IncompatibleLog
from pipgate.metrics import Metrics
from pipgate.pages.bodies import ListRenderer, PageRenderer
from pipgate.pages.source import PageSource
from pipgate.policy.filter import PolicyState
from pipgate.store.blobs import BlobStore
from pipgate.store.evict import Evictor
from pipgate.upstream.registry import Upstreams
from pipgate.web.hot_pages import HotFiles, HotPages


@dataclass(frozen=True)
class Services:
    """Everything a request handler may need; built once at start-up."""

    config: Config
    metrics: Metrics
    upstreams: Upstreams
    #: The whole page pipeline (filters around the router around each upstream).
    pages: PageSource
    files: FileService
    blobs: BlobStore
    renderer: PageRenderer
    lists: ListRenderer
    evictor: Evictor
    failures: FailureLog
    audit: AuditLog
    incompatible: IncompatibleLog
    #: The policy in force (reloaded on SIGHUP, quarantine changes).
    policy: PolicyState
    #: Finished answers of warm pages and of the project list, reused for a second.
    hot_pages: HotPages
    hot_lists: HotFiles
    #: This replica's part in a fleet (a no-op on one host).
    fleet: Fleet


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    """The services of the app serving ``request``."""
    return request.app[SERVICES]
