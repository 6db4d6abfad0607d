"""Every Prometheus metric pipgate exports, in one place.

Label values are bounded: upstream names, closed reason sets, route templates. Never a
project or file name (those go to logs). Each :class:`Metrics` owns its registry so that
several apps (tests) can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipgate import __version__
from pipgate.errors import Reason

CACHE_KINDS = ("index", "file", "metadata")
CACHE_RESULTS = ("hit", "miss", "stale", "revalidated", "bypass")


class Metrics:
    """The metric objects of one pipgate app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.download_failures = Counter(
            "pipgate_download_failures",
            "Failed upstream fetches by cause (closed set, see docs).",
            ["upstream", "reason"],
            registry=r,
        )
        self.cache_requests = Counter(
            "pipgate_cache_requests",
            "Cache lookups by kind and result.",
            ["kind", "result"],
            registry=r,
        )
        self.http_requests = Counter(
            "pipgate_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.bytes_served = Counter(
            "pipgate_bytes_served",
            "File bytes sent to clients, by where they came from.",
            ["source"],
            registry=r,
        )
        self.inflight_downloads = Gauge(
            "pipgate_inflight_downloads",
            "Upstream file downloads in progress.",
            registry=r,
        )
        self.cache_size = Gauge(
            "pipgate_cache_size_bytes", "Bytes of verified files in the cache.", registry=r
        )
        self.cache_files = Gauge(
            "pipgate_cache_files", "Number of files in the cache.", registry=r
        )
        self.cache_evictions = Counter(
            "pipgate_cache_evictions",
            "Files removed to stay under cache.max_size.",
            registry=r,
        )
        self.integrity_checks = Counter(
            "pipgate_integrity_checks",
            "Re-hashes of cached files by the scrubber (ok, corrupt, unverified, error).",
            ["result"],
            registry=r,
        )
        self.download_resumes = Counter(
            "pipgate_download_resumes",
            "Downloads continued with a Range request after the connection broke.",
            ["upstream"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "pipgate_upstream_up",
            "1 while the upstream answers, 0 while it is marked down.",
            ["upstream"],
            registry=r,
        )
        self.proxy_up = Gauge(
            "pipgate_proxy_up",
            "1 while the proxy works, 0 during its cool-down after a failure.",
            ["proxy"],
            registry=r,
        )
        self.build_info = Gauge("pipgate_build_info", "pipgate version.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)

    def failure(self, upstream: str, reason: Reason) -> None:
        """Count one failed upstream fetch."""
        self.download_failures.labels(upstream=upstream, reason=reason.value).inc()

    def cache(self, kind: str, result: str) -> None:
        """Count one cache lookup (``kind`` in CACHE_KINDS, ``result`` in CACHE_RESULTS)."""
        self.cache_requests.labels(kind=kind, result=result).inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
