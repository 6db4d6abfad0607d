"""The declaration of every setting, and the frozen objects the loader builds from them.

Each key is declared once, as a :class:`Setting`; its TOML key, its ``PIPGATE_*``
environment variable and its command-line flag are derived from that declaration.
Settings live in four kinds of table: server-wide ones (``[server]``, ``[cache]``,
``[policy]``, ``[limits]``, ``[auth]``), one slice per upstream (``[upstream]`` or
``[[upstream]]``: everything an upstream client needs, and nothing else), the routing
rules (``[[route]]``) and the policy rules (``[[policy.rule]]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipgate.config import values as v
from pipgate.redact import upstream_label

ENV_PREFIX = "PIPGATE_"
#: The PyPI file host, allowed by default for an upstream at pypi.org.
PYPI_FILES = "https://files.pythonhosted.org"


@dataclass(frozen=True)
class Setting:
    """One configuration key and all the names it goes by."""

    #: Base of the environment variable (``PIPGATE_<NAME>``) and the flag (``--name``).
    name: str
    #: The TOML table (``server``, ``cache``, ``policy``, ``upstream``, ``route``).
    table: str
    #: The key inside the table.
    key: str
    parse: Callable[[Any], Any]
    help: str
    flag: bool = False
    metavar: str | None = None
    #: Attribute of the built object (default: ``name``).
    attr: str = ""
    #: Whether a ``PIPGATE_*`` variable sets it (``[[route]]`` keys are TOML only).
    env: bool = True
    #: A flag that takes no value (``--offline``): it means "true".
    switch: bool = False

    @property
    def field(self) -> str:
        return self.attr or self.name

    @property
    def toml_key(self) -> str:
        return f"{self.table}.{self.key}"

    @property
    def env_var(self) -> str | None:
        return ENV_PREFIX + self.name.upper() if self.env else None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _s(
    name: str, table: str, key: str, parse: Callable[[Any], Any], help: str, **kw: Any
) -> Setting:
    return Setting(name, table, key, parse, help, **kw)


#: Server-wide settings: one value for the whole server.
SERVER_SETTINGS: tuple[Setting, ...] = (
    _s("host", "server", "host", v.parse_host, "address to listen on", flag=True),
    _s("port", "server", "port", v.parse_port, "TCP port to listen on", flag=True),
    _s(
        "public_url",
        "server",
        "public_url",
        v.parse_optional_base_url,
        "absolute base URL for file links (default: relative links)",
    ),
    _s(
        "trust_forwarded",
        "server",
        "trust_forwarded",
        v.parse_bool,
        "build absolute file links from X-Forwarded-Proto/Host (behind a reverse proxy)",
    ),
    _s("log_level", "server", "log_level", v.parse_log_level, "debug|info|warning|error"),
    _s(
        "log_format",
        "server",
        "log_format",
        v.parse_log_format,
        "json (one object per line) or text",
        flag=True,
        metavar="FORMAT",
    ),
    _s(
        "workers",
        "server",
        "workers",
        v.parse_positive_int,
        "worker processes sharing the port and the cache",
        flag=True,
        metavar="N",
    ),
    _s(
        "offline",
        "server",
        "offline",
        v.parse_bool,
        "no upstream traffic at all: serve only what is cached",
        flag=True,
        switch=True,
    ),
    _s(
        "tls_cert",
        "server",
        "tls_cert",
        v.parse_optional_path,
        "PEM certificate (chain) to serve HTTPS with (with tls_key)",
        flag=True,
        metavar="PEM",
    ),
    _s(
        "tls_key",
        "server",
        "tls_key",
        v.parse_optional_path,
        "PEM private key of tls_cert",
        flag=True,
        metavar="PEM",
    ),
    _s(
        "max_connections",
        "server",
        "max_connections",
        v.parse_positive_int,
        "open client connections per worker; beyond it new ones are closed at once",
    ),
    _s(
        "keepalive_timeout",
        "server",
        "keepalive_timeout",
        v.parse_duration,
        "how long an idle client connection (or one still sending its first request) stays open",
    ),
    _s(
        "send_timeout",
        "server",
        "send_timeout",
        v.parse_duration,
        "a response is aborted when the client takes no bytes for this long",
    ),
    _s("cache_dir", "cache", "dir", v.parse_path, "cache directory", flag=True),
    _s(
        "index_ttl",
        "cache",
        "index_ttl",
        v.parse_duration,
        "how long a project page is fresh before revalidation (e.g. 600, 10m)",
        flag=True,
    ),
    _s(
        "root_ttl",
        "cache",
        "root_ttl",
        v.parse_duration,
        "how long the /simple/ project list is fresh (it is large)",
    ),
    _s(
        "negative_ttl",
        "cache",
        "negative_ttl",
        v.parse_duration,
        "how long an upstream 404 is remembered",
    ),
    _s(
        "max_stale",
        "cache",
        "max_stale",
        v.parse_duration,
        "how old a cached page may be when served because upstream fails",
    ),
    _s(
        "max_size",
        "cache",
        "max_size",
        v.parse_size,
        "largest total size of cached files (e.g. 50GB; 0 = unlimited)",
    ),
    _s(
        "scrub_rate",
        "cache",
        "scrub_rate",
        v.parse_size,
        "bytes per second re-hashed by the background integrity scrub (0 = off)",
    ),
    _s(
        "deny",
        "policy",
        "deny",
        v.parse_project_patterns,
        "projects never served (names or patterns like 'evil-*'); reason 'policy'",
    ),
    _s(
        "policy_default",
        "policy",
        "default",
        v.parse_action,
        "allow: serve what no rule denies; deny: an allow-list, serve only what a rule allows",
    ),
    _s(
        "min_age",
        "policy",
        "min_age",
        v.parse_duration,
        "release cooldown: files uploaded less than this long ago are held back (e.g. 7d)",
    ),
    _s(
        "exclude_newer",
        "policy",
        "exclude_newer",
        v.parse_optional_timestamp,
        "files uploaded after this time are held back (e.g. 2026-03-24T00:00:00Z)",
    ),
    _s(
        "cooldown_exempt",
        "policy",
        "cooldown_exempt",
        v.parse_project_patterns,
        "projects (names or globs) never held back by the cooldown",
    ),
    _s(
        "audit_retention",
        "policy",
        "audit_retention",
        v.parse_duration,
        "how long the download audit trail is kept",
    ),
    _s(
        "max_file_size",
        "limits",
        "max_file_size",
        v.parse_size,
        "largest distribution file fetched from upstream (0 = no limit)",
    ),
    _s(
        "max_page_size",
        "limits",
        "max_page_size",
        v.parse_size,
        "largest project page read from upstream, after decompression",
    ),
    _s(
        "max_list_size",
        "limits",
        "max_list_size",
        v.parse_size,
        "largest /simple/ project list read from upstream, after decompression",
    ),
    _s(
        "list_timeout",
        "limits",
        "list_timeout",
        v.parse_duration,
        "total time allowed for fetching the upstream project list",
    ),
    _s(
        "max_downloads",
        "limits",
        "max_downloads",
        v.parse_positive_int,
        "upstream file downloads running at once in one worker (more wait in a queue)",
    ),
    _s(
        "max_client_downloads",
        "limits",
        "max_client_downloads",
        v.parse_positive_int,
        "upstream file downloads one client address may start at once in one worker",
    ),
    _s(
        "queue_timeout",
        "limits",
        "queue_timeout",
        v.parse_duration,
        "how long a download waits for a free slot before a 503 with Retry-After",
    ),
    _s(
        "page_fetch_rate",
        "limits",
        "page_fetch_rate",
        v.parse_rate,
        "upstream page fetches per second one worker may start (0 = no limit)",
    ),
    _s(
        "client_page_fetch_rate",
        "limits",
        "client_page_fetch_rate",
        v.parse_rate,
        "upstream page fetches per second one client address may cause (0 = no limit)",
    ),
    _s(
        "max_negative_entries",
        "limits",
        "max_negative_entries",
        v.parse_positive_int,
        "remembered upstream 404s; the oldest are forgotten beyond it",
    ),
    _s(
        "htpasswd",
        "auth",
        "htpasswd",
        v.parse_optional_path,
        "htpasswd file (bcrypt) whose users may read; unset: reads are open",
    ),
    _s(
        "read_tokens",
        "auth",
        "tokens",
        v.parse_optional_path,
        "file of 'user:token' lines whose bearer tokens may read",
    ),
    _s(
        "admin_token_file",
        "auth",
        "admin_token_file",
        v.parse_optional_path,
        "file holding the admin token for /-/admin/ and full status details",
    ),
    _s(
        "admin_token_env",
        "auth",
        "admin_token_env",
        v.parse_optional_text,
        "name of an environment variable holding the admin token",
    ),
)

#: Several replicas as one cache (issue 14): the shared store behind each replica's cache
#: directory, and what coordinates them.
FLEET_SETTINGS: tuple[Setting, ...] = (
    _s(
        "storage",
        "storage",
        "kind",
        v.parse_storage_kind,
        "disk (this host only), s3 (a shared bucket) or directory (a shared mount)",
        attr="storage_kind",
        flag=True,
        metavar="KIND",
    ),
    _s(
        "s3_endpoint",
        "storage",
        "endpoint",
        v.parse_optional_endpoint,
        "S3 endpoint URL (empty: AWS for the region)",
    ),
    _s("s3_bucket", "storage", "bucket", v.parse_bucket, "bucket holding the shared blobs"),
    _s(
        "s3_prefix",
        "storage",
        "prefix",
        v.parse_key_prefix,
        "key prefix inside the bucket (several caches in one bucket)",
    ),
    _s("s3_region", "storage", "region", v.parse_text, "S3 region"),
    _s(
        "s3_path_style",
        "storage",
        "path_style",
        v.parse_bool,
        "path-style addressing (MinIO, SeaweedFS; false: virtual-hosted, AWS)",
    ),
    _s(
        "s3_access_key_env",
        "storage",
        "access_key_env",
        v.parse_optional_text,
        "environment variable holding the access key id (unset: AWS_ACCESS_KEY_ID, roles)",
    ),
    _s(
        "s3_access_key_file",
        "storage",
        "access_key_file",
        v.parse_optional_path,
        "file holding the access key id",
    ),
    _s(
        "s3_secret_key_env",
        "storage",
        "secret_key_env",
        v.parse_optional_text,
        "environment variable holding the secret access key",
    ),
    _s(
        "s3_secret_key_file",
        "storage",
        "secret_key_file",
        v.parse_optional_path,
        "file holding the secret access key",
    ),
    _s(
        "s3_ca_bundle",
        "storage",
        "ca_bundle",
        v.parse_optional_path,
        "PEM CA bundle for an https endpoint with a private CA",
    ),
    _s("s3_verify", "storage", "verify", v.parse_bool, "verify the endpoint's TLS certificate"),
    _s(
        "shared_directory",
        "storage",
        "directory",
        v.parse_optional_path,
        "the directory every replica mounts (storage.kind = directory)",
    ),
    _s(
        "shared_max_size",
        "storage",
        "max_size",
        v.parse_size,
        "size cap of the shared store, least recently used out first (0 = none)",
    ),
    _s(
        "coordination",
        "coordination",
        "kind",
        v.parse_coordination_kind,
        "local (one host) or redis (one upstream fetch for the whole fleet)",
        attr="coordination_kind",
        flag=True,
        metavar="KIND",
    ),
    _s(
        "redis_url",
        "coordination",
        "url",
        v.parse_redis_url,
        "redis:// or rediss:// URL (no password in it)",
    ),
    _s("redis_username", "coordination", "username", v.parse_optional_text, "Redis ACL user"),
    _s(
        "redis_password_env",
        "coordination",
        "password_env",
        v.parse_optional_text,
        "environment variable holding the Redis password",
    ),
    _s(
        "redis_password_file",
        "coordination",
        "password_file",
        v.parse_optional_path,
        "file holding the Redis password",
    ),
    _s(
        "lease_ttl",
        "coordination",
        "lease_ttl",
        v.parse_duration,
        "a download lease's lifetime: how long a dead replica's lease blocks a takeover",
    ),
    _s(
        "replica",
        "coordination",
        "replica",
        v.parse_replica_name,
        "this replica's name (metrics label; default: the host name)",
    ),
    _s(
        "advertise_url",
        "coordination",
        "advertise_url",
        v.parse_optional_base_url,
        "where other replicas reach this one (default: http://<host name>:<port>)",
    ),
    _s(
        "fleet_secret_env",
        "coordination",
        "secret_env",
        v.parse_optional_text,
        "environment variable holding the secret replicas authenticate each other with",
    ),
    _s(
        "fleet_secret_file",
        "coordination",
        "secret_file",
        v.parse_optional_path,
        "file holding that secret",
    ),
)

#: The slice of one upstream. Environment variables and flags set the first upstream.
UPSTREAM_SETTINGS: tuple[Setting, ...] = (
    _s(
        "upstream_name",
        "upstream",
        "name",
        v.parse_upstream_name,
        "short name of the upstream for routes, metrics and logs (default: its host)",
        attr="name",
    ),
    _s(
        "upstream",
        "upstream",
        "url",
        v.parse_index_url,
        "upstream simple index URL",
        flag=True,
        metavar="URL",
        attr="url",
    ),
    _s(
        "file_hosts",
        "upstream",
        "file_hosts",
        v.parse_optional_origins,
        "other origins the index's file links may point to (pypi.org: files.pythonhosted.org)",
    ),
    _s(
        "require_hashes",
        "upstream",
        "require_hashes",
        v.parse_bool,
        "refuse files the index publishes no sha256 for (403) instead of caching them unverified",
    ),
    _s(
        "upstream_min_age",
        "upstream",
        "min_age",
        v.parse_optional_duration,
        "release cooldown for this upstream's files (default: [policy] min_age)",
        attr="min_age",
    ),
    _s(
        "upstream_exclude_newer",
        "upstream",
        "exclude_newer",
        v.parse_optional_timestamp,
        "cut-off time for this upstream's files (default: [policy] exclude_newer)",
        attr="exclude_newer",
    ),
    _s(
        "synthesize_upload_time",
        "upstream",
        "synthesize_upload_time",
        v.parse_bool,
        "publish when pipgate first saw a file as its upload-time when upstream sends none",
    ),
    _s(
        "page_connections",
        "upstream",
        "page_connections",
        v.parse_positive_int,
        "connections for pages and metadata (a pool of their own, never taken by files)",
    ),
    _s(
        "file_connections",
        "upstream",
        "file_connections",
        v.parse_positive_int,
        "connections for distribution files",
    ),
    _s("connect_timeout", "upstream", "connect_timeout", v.parse_duration, "connect timeout"),
    _s("read_timeout", "upstream", "read_timeout", v.parse_duration, "idle read timeout"),
    _s(
        "page_timeout",
        "upstream",
        "page_timeout",
        v.parse_duration,
        "total time allowed for one index page fetch",
    ),
    _s(
        "retries",
        "upstream",
        "retries",
        v.parse_int,
        "extra attempts for a failed fetch (connection errors, timeouts, 429, 5xx)",
    ),
    _s(
        "retry_max_time",
        "upstream",
        "retry_max_time",
        v.parse_duration,
        "longest total time spent retrying one fetch",
    ),
    _s(
        "down_after",
        "upstream",
        "down_after",
        v.parse_positive_int,
        "consecutive failures after which the upstream is marked down",
    ),
    _s(
        "down_cooldown",
        "upstream",
        "down_cooldown",
        v.parse_duration,
        "how long a down upstream is skipped before it is probed again",
    ),
    _s(
        "proxy",
        "upstream",
        "proxy",
        v.parse_proxies,
        "corporate proxy URL, or an ordered list tried in turn (default: HTTP(S)_PROXY)",
        flag=True,
        metavar="URL",
    ),
    _s(
        "proxy_auth_env",
        "upstream",
        "proxy_auth_env",
        v.parse_optional_text,
        "name of an environment variable holding proxy credentials as user:password",
    ),
    _s(
        "proxy_auth_file",
        "upstream",
        "proxy_auth_file",
        v.parse_optional_path,
        "file holding proxy credentials as user:password (e.g. a Docker secret)",
    ),
    _s(
        "proxy_cooldown",
        "upstream",
        "proxy_cooldown",
        v.parse_duration,
        "how long a failing proxy is skipped",
    ),
    _s(
        "ca_bundle",
        "upstream",
        "ca_bundle",
        v.parse_optional_path,
        "PEM file of CA certificates for upstream TLS (a TLS-intercepting proxy's CA)",
    ),
    _s(
        "ca_bundle_mode",
        "upstream",
        "ca_bundle_mode",
        v.parse_ca_mode,
        "add: system CAs plus ca_bundle; replace: only ca_bundle",
    ),
    _s(
        "client_cert",
        "upstream",
        "client_cert",
        v.parse_optional_path,
        "client certificate (PEM) for mutual TLS",
    ),
    _s("client_key", "upstream", "client_key", v.parse_optional_path, "key of client_cert"),
    _s(
        "verify",
        "upstream",
        "verify",
        v.parse_bool,
        "verify upstream TLS certificates (false is insecure and loudly reported)",
    ),
    _s(
        "username",
        "upstream",
        "username",
        v.parse_optional_text,
        "user name for HTTP basic auth to a private index",
    ),
    _s(
        "password_env",
        "upstream",
        "password_env",
        v.parse_optional_text,
        "name of an environment variable holding the basic-auth password",
    ),
    _s(
        "password_file",
        "upstream",
        "password_file",
        v.parse_optional_path,
        "file holding the basic-auth password",
    ),
    _s(
        "token_env",
        "upstream",
        "token_env",
        v.parse_optional_text,
        "name of an environment variable holding a bearer token",
    ),
    _s(
        "token_file", "upstream", "token_file", v.parse_optional_path, "file holding a bearer token"
    ),
)

#: One routing rule (``[[route]]``); TOML only.
ROUTE_SETTINGS: tuple[Setting, ...] = (
    _s(
        "projects",
        "route",
        "projects",
        v.parse_required_patterns,
        "project names or globs this rule applies to (PEP 503 normalised)",
        env=False,
    ),
    _s(
        "upstreams",
        "route",
        "upstreams",
        v.parse_upstream_names,
        "the upstreams, in order, that may serve these projects",
        env=False,
    ),
    _s(
        "merge",
        "route",
        "merge",
        v.parse_bool,
        "combine the files of these upstreams (first wins on a filename) instead of "
        "taking the first that has the project",
        env=False,
    ),
)

#: One policy rule (``[[policy.rule]]``); TOML only.
POLICY_RULE_SETTINGS: tuple[Setting, ...] = (
    _s("name", "policy.rule", "name", v.parse_rule_name, "name shown in messages", env=False),
    _s("action", "policy.rule", "action", v.parse_action, "allow or deny", env=False),
    _s(
        "projects",
        "policy.rule",
        "projects",
        v.parse_required_patterns,
        "project names or globs (PEP 503 normalised)",
        env=False,
    ),
    _s(
        "versions",
        "policy.rule",
        "versions",
        v.parse_specifier,
        "PEP 440 specifier of the versions the rule applies to (default: all)",
        env=False,
    ),
    _s(
        "upstreams",
        "policy.rule",
        "upstreams",
        v.parse_upstream_names,
        "only files from these upstreams (default: any)",
        env=False,
    ),
    _s("reason", "policy.rule", "reason", v.parse_text, "shown to whoever is refused", env=False),
    _s(
        "min_age",
        "policy.rule",
        "min_age",
        v.parse_duration,
        "release cooldown for these projects",
        env=False,
    ),
    _s(
        "exclude_newer",
        "policy.rule",
        "exclude_newer",
        v.parse_optional_timestamp,
        "cut-off time for these projects",
        env=False,
    ),
)

SETTINGS: tuple[Setting, ...] = (
    SERVER_SETTINGS + FLEET_SETTINGS + UPSTREAM_SETTINGS + ROUTE_SETTINGS + POLICY_RULE_SETTINGS
)


# --- the built objects -------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """An upstream's credentials and the proxy environment, read once at start-up.

    ``repr`` shows no value, so a logged or printed Config never leaks them.
    """

    proxy_auth: tuple[str, str] | None = field(default=None, repr=False)
    #: Basic auth for the index's own origin (``username`` + password, or the
    #: credentials written in the upstream URL).
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    #: ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (either case), honoured when no
    #: ``proxy`` is configured for this upstream.
    env_proxies: dict[str, str] = field(default_factory=dict, repr=False)
    #: ``REQUESTS_CA_BUNDLE`` (``SSL_CERT_FILE`` is honoured by the ssl module itself).
    env_ca_bundle: Path | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    """Everything one upstream client needs: its slice of the configuration."""

    #: Short name for routes, metric labels and logs (default: ``host[:port]``).
    name: str = ""
    #: The simple index URL, ending in ``/``, without credentials.
    url: str = "https://pypi.org/simple/"
    #: Origins besides the index's own that file links may point to; ``None``: the
    #: default (``files.pythonhosted.org`` for pypi.org, none otherwise).
    file_hosts: tuple[str, ...] | None = None
    require_hashes: bool = False
    #: Cooldown of this upstream's files; ``None``: the ``[policy]`` value.
    min_age: float | None = None
    exclude_newer: float | None = None
    synthesize_upload_time: bool = False
    page_connections: int = 16
    file_connections: int = 64
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    page_timeout: float = 60.0
    retries: int = 2
    retry_max_time: float = 30.0
    down_after: int = 5
    down_cooldown: float = 30.0
    proxy: tuple[str, ...] = ()
    proxy_auth_env: str | None = None
    proxy_auth_file: Path | None = None
    proxy_cooldown: float = 60.0
    ca_bundle: Path | None = None
    ca_bundle_mode: str = "add"
    client_cert: Path | None = None
    client_key: Path | None = None
    verify: bool = True
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    secrets: Secrets = field(default_factory=Secrets)

    def __post_init__(self) -> None:
        if not self.name:
            default = "export" if self.url.startswith("file:") else upstream_label(self.url)
            object.__setattr__(self, "name", default)

    @property
    def origin(self) -> str:
        """The index's own origin (credentials go there and nowhere else)."""
        return origin_of(self.url)

    @property
    def file_origins(self) -> tuple[str, ...]:
        """Every origin file links may point to: the index's own first."""
        extra = self.file_hosts
        if extra is None:
            extra = (PYPI_FILES,) if urlsplit(self.url).hostname == "pypi.org" else ()
        return (self.origin, *(o for o in extra if o != self.origin))


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[route]]`` rule: these projects come from these upstreams, in this order."""

    projects: tuple[str, ...]
    upstreams: tuple[str, ...]
    merge: bool = False


@dataclass(frozen=True)
class PolicyRule:
    """One ``[[policy.rule]]``: allow or deny, and/or a cooldown, for some projects."""

    name: str
    projects: tuple[str, ...]
    action: str | None = None
    #: PEP 440 specifier text; ``None``: every version.
    versions: str | None = None
    #: Only files from these upstreams; empty: any.
    upstreams: tuple[str, ...] = ()
    reason: str = ""
    min_age: float | None = None
    exclude_newer: float | None = None


def _default_upstreams() -> tuple[UpstreamConfig, ...]:
    return (UpstreamConfig(),)


@dataclass(frozen=True)
class Config:
    """The resolved configuration; built once at start and passed down."""

    host: str = "127.0.0.1"
    port: int = 3141
    public_url: str | None = None
    trust_forwarded: bool = False
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    #: No upstream traffic at all; pages list only what is cached.
    offline: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_connections: int = 1024
    keepalive_timeout: float = 15.0
    send_timeout: float = 60.0
    cache_dir: Path = field(default_factory=v.default_cache_dir)
    index_ttl: float = 600.0
    root_ttl: float = 3600.0
    negative_ttl: float = 60.0
    max_stale: float = 86400.0
    max_size: int = 0
    scrub_rate: int = 0
    deny: tuple[str, ...] = ()
    #: ``allow`` (serve what no rule denies) or ``deny`` (an allow-list).
    policy_default: str = "allow"
    min_age: float = 0.0
    exclude_newer: float | None = None
    cooldown_exempt: tuple[str, ...] = ()
    audit_retention: float = 90 * 86400.0
    max_file_size: int = 20 << 30
    max_page_size: int = 64 << 20
    max_list_size: int = 512 << 20
    list_timeout: float = 600.0
    max_downloads: int = 64
    max_client_downloads: int = 16
    queue_timeout: float = 30.0
    page_fetch_rate: float = 50.0
    client_page_fetch_rate: float = 20.0
    max_negative_entries: int = 100_000
    htpasswd: Path | None = None
    read_tokens: Path | None = None
    admin_token_file: Path | None = None
    admin_token_env: str | None = None
    #: The admin token itself, read from ``admin_token_file`` or ``admin_token_env``.
    admin_token: str | None = field(default=None, repr=False)
    policy_rules: tuple[PolicyRule, ...] = ()
    storage_kind: str = "disk"
    s3_endpoint: str | None = None
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_path_style: bool = True
    s3_access_key_env: str | None = None
    s3_access_key_file: Path | None = None
    s3_secret_key_env: str | None = None
    s3_secret_key_file: Path | None = None
    s3_ca_bundle: Path | None = None
    s3_verify: bool = True
    shared_directory: Path | None = None
    shared_max_size: int = 0
    coordination_kind: str = "local"
    redis_url: str | None = None
    redis_username: str | None = None
    redis_password_env: str | None = None
    redis_password_file: Path | None = None
    lease_ttl: float = 15.0
    replica: str = ""
    advertise_url: str | None = None
    fleet_secret_env: str | None = None
    fleet_secret_file: Path | None = None
    #: The credentials the keys above name, read once at start-up (never printed).
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    fleet_secret: str | None = field(default=None, repr=False)
    #: The upstreams in their configured order (the default route order).
    upstreams: tuple[UpstreamConfig, ...] = field(default_factory=_default_upstreams)
    routes: tuple[RouteConfig, ...] = ()
    #: Where the values came from, for ``pipgate doctor`` and start-up logs.
    config_file: Path | None = None

    def upstream(self, name: str) -> UpstreamConfig:
        """The slice of the upstream called ``name`` (``KeyError`` if none)."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lowercase, without a default port."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}"
