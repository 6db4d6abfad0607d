"""Every Prometheus metric pipgate exports, in one place.

Label values are bounded: upstream names, closed reason sets, route templates. Never a
project or file name (those go to logs and ``/-/failures``). Each :class:`Metrics` owns
its registry so that several apps (tests) can live in one process.

With ``--workers N`` the values live in prometheus-client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``), and a scrape of any worker shows the sum over all of
them; gauges say how workers combine (``livesum``, ``max``, ``mostrecent``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from pipgate import __version__
from pipgate.errors import Reason
from pipgate.useragent import INSTALLERS

# The ``_created`` series (one per counter and histogram child, a timestamp) double the
# exposition and no dashboard or alert reads them.
disable_created_metrics()

#: What a cache look-up was for: a project page or the project list, a file, its
#: PEP 658 metadata.
CACHE_KINDS = ("page", "file", "metadata")
CACHE_RESULTS = ("hit", "miss", "stale", "revalidated", "bypass")
UPSTREAM_KINDS = ("page", "root", "metadata", "file")
#: Why the policy refused a page or a file (:class:`pipgate.policy.rules.Kind`).
POLICY_KINDS = ("deny", "allowlist", "version", "cooldown", "quarantine", "unhashed")
#: Why a file link was left out of an upstream's page.
LINK_DROP_CAUSES = ("scheme", "origin", "duplicate")
#: Which limit refused or cut a request or connection (``pipgate_limited_total``).
LIMITS = (
    "connections",
    "downloads",
    "client_downloads",
    "page_rate",
    "client_page_rate",
    "send_timeout",
)
#: Requests refused for their credentials (``pipgate_auth_refusals_total``): which
#: area asked (reads, the admin API) and why (no credentials, wrong ones, or too many
#: wrong ones from the client's address).
AUTH_SCOPES = ("read", "admin")
AUTH_CAUSES = ("missing", "invalid", "limited")
#: Route templates of the web layer (``route`` label values).
ROUTES = (
    "landing",
    "healthz",
    "readyz",
    "metrics",
    "failures",
    "setup",
    "simple_root",
    "simple_project",
    "simple_redirect",
    "simple_redirect_project",
    "simple_other",
    "file",
    "fleet_blob",
    "admin_status",
    "admin_readyz",
    "admin_failures",
    "admin_audit",
    "admin_pages",
    "admin_file",
    "admin_file_by_name",
    "admin_scrub",
    "admin_reload",
    "admin_quarantine",
    "other",
)
#: Request latency buckets: index pages in milliseconds, big files in minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metric objects of one pipgate app (or of one worker)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._multiprocess_dir = multiprocess_dir
        r = self.registry
        self.download_failures = Counter(
            "pipgate_download_failures",
            "Failed upstream fetches by cause (closed set: see README).",
            ["upstream", "reason"],
            registry=r,
        )
        self.cache_requests = Counter(
            "pipgate_cache_requests",
            "Cache look-ups by kind (page, file, metadata) and result.",
            ["kind", "result"],
            registry=r,
        )
        self.http_requests = Counter(
            "pipgate_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "pipgate_http_request_duration_seconds",
            "Time to answer a request (until the last byte was handed to the client).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "pipgate_upstream_requests",
            "Requests to upstream by kind and outcome (ok, not_modified, not_found, or a "
            "failure reason).",
            ["upstream", "kind", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "pipgate_upstream_request_duration_seconds",
            "Time until upstream's response headers arrived.",
            ["upstream", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes_served = Counter(
            "pipgate_bytes_served",
            "File bytes sent to clients, by where they came from (cache or upstream).",
            ["source"],
            registry=r,
        )
        self.bytes_fetched = Counter(
            "pipgate_bytes_fetched",
            "File bytes received from upstream.",
            ["upstream"],
            registry=r,
        )
        self.limited = Counter(
            "pipgate_limited",
            "Connections refused, requests refused (503/429) and responses cut by a limit.",
            ["limit"],
            registry=r,
        )
        for limit in LIMITS:
            self.limited.labels(limit=limit)
        self.auth_refusals = Counter(
            "pipgate_auth_refusals",
            "Requests refused for their credentials, by scope (read, admin) and cause "
            "(missing, invalid, limited).",
            ["scope", "cause"],
            registry=r,
        )
        for scope in AUTH_SCOPES:
            for cause in AUTH_CAUSES:
                self.auth_refusals.labels(scope=scope, cause=cause)
        self.inflight_downloads = Gauge(
            "pipgate_inflight_downloads",
            "Upstream file downloads in progress.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_size = Gauge(
            "pipgate_cache_size_bytes",
            "Bytes of verified files in the cache.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.cache_max_size = Gauge(
            "pipgate_cache_max_size_bytes",
            "cache.max_size (0 = unlimited).",
            registry=r,
            multiprocess_mode="max",
        )
        self.cache_files = Gauge(
            "pipgate_cache_files",
            "Number of files in the cache.",
            registry=r,
            multiprocess_mode="mostrecent",
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
        self.links_dropped = Counter(
            "pipgate_links_dropped",
            "File links left out of upstream pages: not http(s) (scheme), on an origin "
            "outside the upstream's file_hosts (origin), or a second file of one name "
            "(duplicate).",
            ["upstream", "cause"],
            registry=r,
        )
        self.merge_conflicts = Counter(
            "pipgate_merge_conflicts",
            "Files of a merge route dropped because an earlier upstream offers the same "
            "filename with other contents (labelled by the upstream whose file was dropped).",
            ["upstream"],
            registry=r,
        )
        self.policy_blocks = Counter(
            "pipgate_policy_blocks",
            "Pages and files refused by policy, by kind (deny, allowlist, version, cooldown, "
            "quarantine, unhashed).",
            ["kind"],
            registry=r,
        )
        for kind in POLICY_KINDS:
            self.policy_blocks.labels(kind=kind)
        self.incompatible_pages = Counter(
            "pipgate_incompatible_pages",
            "Project pages served to an installer whose environment none of the newest "
            "release's files fit (by installer).",
            ["installer"],
            registry=r,
        )
        for installer in INSTALLERS:
            self.incompatible_pages.labels(installer=installer)
        self.upstream_up = Gauge(
            "pipgate_upstream_up",
            "1 while the upstream answers, 0 while it is marked down.",
            ["upstream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.proxy_up = Gauge(
            "pipgate_proxy_up",
            "1 while the proxy works, 0 during its cool-down after a failure.",
            ["proxy"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.build_info = Gauge(
            "pipgate_build_info",
            "pipgate version.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(version=__version__).set(1)
        # Several replicas as one cache (issue 14). The replica's name is a label of
        # pipgate_replica_info only: Prometheus adds it to every series per target.
        self.replica_info = Gauge(
            "pipgate_replica_info",
            "This replica's name, storage and coordination kind.",
            ["replica", "storage", "coordination"],
            registry=r,
            multiprocess_mode="max",
        )
        self.fleet_coordination_up = Gauge(
            "pipgate_fleet_coordination_up",
            "1 while fleet coordination (Redis) works, 0 while this replica is on its own.",
            registry=r,
            multiprocess_mode="min",
        )
        self.fleet_leases = Counter(
            "pipgate_fleet_leases",
            "Fleet download leases asked for: taken, held_elsewhere, local (coordination down).",
            ["result"],
            registry=r,
        )
        self.fleet_takeovers = Counter(
            "pipgate_fleet_takeovers",
            "Downloads this replica took over after the lease holder stopped serving them.",
            registry=r,
        )
        self.fleet_peer_bytes = Counter(
            "pipgate_fleet_peer_bytes",
            "Bytes streamed from or to other replicas (direction: received, sent).",
            ["direction"],
            registry=r,
        )
        self.fleet_shared = Counter(
            "pipgate_fleet_shared",
            "Shared-store operations (op: read, commit, evict; result: ok, exists, missing, "
            "error).",
            ["op", "result"],
            registry=r,
        )

    def initialise(self, upstream: str) -> None:
        """Create every bounded label combination at zero, so dashboards and alerts see
        each series (a counter that never fired would otherwise be absent)."""
        for reason in Reason:
            self.download_failures.labels(upstream=upstream, reason=reason.value)
        for kind in CACHE_KINDS:
            for result in CACHE_RESULTS:
                self.cache_requests.labels(kind=kind, result=result)
        for source in ("cache", "upstream"):
            self.bytes_served.labels(source=source)
        self.bytes_fetched.labels(upstream=upstream)
        self.download_resumes.labels(upstream=upstream)
        for result in ("ok", "corrupt", "unverified", "error"):
            self.integrity_checks.labels(result=result)
        for kind in UPSTREAM_KINDS:
            self.upstream_duration.labels(upstream=upstream, kind=kind)
            self.upstream_requests.labels(upstream=upstream, kind=kind, outcome="ok")
        for cause in LINK_DROP_CAUSES:
            self.links_dropped.labels(upstream=upstream, cause=cause)
        self.merge_conflicts.labels(upstream=upstream)

    def initialise_fleet(self) -> None:
        """The fleet series at zero on every node (one host shows them as zeros)."""
        for direction in ("received", "sent"):
            self.fleet_peer_bytes.labels(direction=direction)
        for op in ("read", "commit", "evict"):
            for result in ("ok", "exists", "missing", "error"):
                self.fleet_shared.labels(op=op, result=result)
        for result in ("taken", "held_elsewhere", "local"):
            self.fleet_leases.labels(result=result)

    def initialise_policy(self, label: str) -> None:
        """The series of policy refusals, which no upstream was asked about."""
        self.download_failures.labels(upstream=label, reason=Reason.POLICY.value)

    def failure(self, upstream: str, reason: Reason) -> None:
        """Count one failed upstream fetch."""
        self.download_failures.labels(upstream=upstream, reason=reason.value).inc()

    def cache(self, kind: str, result: str) -> None:
        """Count one cache look-up (``kind`` in CACHE_KINDS, ``result`` in CACHE_RESULTS)."""
        self._child(self.cache_requests, (kind, result)).inc()

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its duration (the per-request hot path)."""
        self._child(self.http_requests, (route, method, str(status))).inc()
        self._child(self.http_duration, (route,)).observe(seconds)

    def upstream_done(self, upstream: str, kind: str, outcome: str, seconds: float) -> None:
        """Count one request to upstream and the time to its response headers."""
        self._child(self.upstream_requests, (upstream, kind, outcome)).inc()
        self._child(self.upstream_duration, (upstream, kind)).observe(seconds)

    def _child(self, metric: Any, values: tuple[str, ...]) -> Any:
        """``metric.labels(*values)``, remembered: ``labels()`` validates and locks on
        every call, a few µs that every request paid several times. Label sets are
        bounded (routes, statuses, closed sets), so the memo is too."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        """The text exposition: this worker's, or the sum over all workers."""
        if self._multiprocess_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self._multiprocess_dir))
            return generate_latest(registry)
        return generate_latest(self.registry)
