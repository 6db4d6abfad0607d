"""One typed, frozen configuration object for every subcommand.

Sources, lowest to highest precedence: built-in defaults < TOML file (``--config`` or
``PIPGATE_CONFIG``) < ``PIPGATE_<NAME>`` environment variables < command-line flags.
Every setting is declared once in :data:`SETTINGS`; the TOML key, the environment
variable and the flag are all derived from that one declaration, and every bad value
becomes a one-line :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "PIPGATE_"


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what is wrong."""


# --- value parsers: each takes a raw value (TOML-typed or a string) --------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_duration(raw: Any) -> float:
    """Seconds from ``600``, ``"600"``, ``"10m"``, ``"1.5h"``, ``"1d"``."""
    if isinstance(raw, bool):
        raise ValueError("expected a duration like 600, '10m' or '1h'")
    if isinstance(raw, (int, float)):
        value = float(raw)
    else:
        match = _DURATION.match(str(raw))
        if not match:
            raise ValueError(f"expected a duration like 600, '10m' or '1h', got {raw!r}")
        unit = match.group(2).lower() if match.group(2) else None
        value = float(match.group(1)) * _DURATION_UNITS[unit]
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_size(raw: Any) -> int:
    """Bytes from ``1048576``, ``"50GB"``, ``"512MiB"``, ``"0"`` (units of 1024)."""
    if isinstance(raw, bool):
        raise ValueError("expected a size like '50GB'")
    if isinstance(raw, int):
        value = raw
    else:
        match = _SIZE.match(str(raw))
        if not match:
            raise ValueError(f"expected a size like '50GB' or '512MiB', got {raw!r}")
        unit = (match.group(2) or "b").lower()[:1]
        scale = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
        value = int(float(match.group(1)) * scale)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_bool(raw: Any) -> bool:
    """A TOML boolean or one of true/false/1/0/yes/no/on/off."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_port(raw: Any) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    value = _parse_int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port 0-65535, got {raw!r}")
    return value


def parse_positive_int(raw: Any) -> int:
    """An integer of at least 1."""
    value = _parse_int(raw)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {raw!r}")
    return value


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def parse_index_url(raw: Any) -> str:
    """An http(s) simple-index URL, normalised to end in ``/``."""
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL like https://pypi.org/simple/")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment")
    return text if text.endswith("/") else text + "/"


def parse_optional_base_url(raw: Any) -> str | None:
    """An absolute http(s) base URL for rewritten links, or empty for relative links."""
    text = str(raw).strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL like https://pypi.example.com/")
    return text if text.endswith("/") else text + "/"


def parse_path(raw: Any) -> Path:
    """A filesystem path; ``~`` is expanded."""
    text = str(raw).strip()
    if not text:
        raise ValueError("must not be empty")
    return Path(text).expanduser()


def parse_host(raw: Any) -> str:
    """A host name or IP address to listen on."""
    text = str(raw).strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"expected a host name or address, got {raw!r}")
    return text


def parse_log_format(raw: Any) -> str:
    """``json`` (containers, log pipelines) or ``text``."""
    text = str(raw).strip().lower()
    if text not in ("json", "text"):
        raise ValueError(f"expected json or text, got {raw!r}")
    return text


def parse_log_level(raw: Any) -> str:
    """One of debug, info, warning, error."""
    text = str(raw).strip().lower()
    if text not in {"debug", "info", "warning", "error"}:
        raise ValueError(f"expected debug, info, warning or error, got {raw!r}")
    return text


def parse_proxies(raw: Any) -> tuple[str, ...]:
    """One proxy URL or an ordered list (TOML array, or comma-separated text)."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    proxies = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http:// or https:// proxy URLs like http://proxy:3128")
        proxies.append(text)
    return tuple(proxies)


def parse_project_patterns(raw: Any) -> tuple[str, ...]:
    """Project names or ``fnmatch`` patterns (TOML array, or comma-separated text)."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    patterns = []
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        if not all(c.isalnum() or c in "-_.*?[]!" for c in text):
            raise ValueError(f"expected project names or patterns like 'evil-*', got {item!r}")
        patterns.append(text)
    return tuple(patterns)


def parse_optional_path(raw: Any) -> Path | None:
    """A path, or empty for none."""
    text = str(raw).strip()
    return Path(text).expanduser() if text else None


def parse_optional_text(raw: Any) -> str | None:
    """A short text (an environment variable name, a user name), or empty for none."""
    text = str(raw).strip()
    if any(c.isspace() for c in text):
        raise ValueError(f"must not contain spaces, got {raw!r}")
    return text or None


def parse_ca_mode(raw: Any) -> str:
    """``add`` (system CAs plus ca_bundle) or ``replace`` (only ca_bundle)."""
    text = str(raw).strip().lower()
    if text not in ("add", "replace"):
        raise ValueError(f"expected add or replace, got {raw!r}")
    return text


def default_cache_dir() -> Path:
    """The user's cache directory (``$XDG_CACHE_HOME/pipgate`` or ``~/.cache/pipgate``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pipgate"


# --- the declaration of every setting ---------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One configuration key and all the names it goes by."""

    name: str  # attribute of Config; env PIPGATE_<NAME>; flag --<name-with-dashes>
    section: str  # TOML table
    key: str  # TOML key within the table
    parse: Callable[[Any], Any]
    help: str
    flag: bool = False
    metavar: str | None = None

    @property
    def toml_key(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "server", "host", parse_host, "address to listen on", flag=True),
    Setting("port", "server", "port", parse_port, "TCP port to listen on", flag=True),
    Setting(
        "public_url",
        "server",
        "public_url",
        parse_optional_base_url,
        "absolute base URL for file links (default: relative links)",
    ),
    Setting(
        "trust_forwarded",
        "server",
        "trust_forwarded",
        parse_bool,
        "build absolute file links from X-Forwarded-Proto/Host (behind a reverse proxy)",
    ),
    Setting("log_level", "server", "log_level", parse_log_level, "debug|info|warning|error"),
    Setting(
        "log_format",
        "server",
        "log_format",
        parse_log_format,
        "json (one object per line) or text",
        flag=True,
        metavar="FORMAT",
    ),
    Setting(
        "workers",
        "server",
        "workers",
        parse_positive_int,
        "worker processes sharing the port and the cache",
        flag=True,
        metavar="N",
    ),
    Setting("cache_dir", "cache", "dir", parse_path, "cache directory", flag=True),
    Setting(
        "index_ttl",
        "cache",
        "index_ttl",
        parse_duration,
        "how long a project page is fresh before revalidation (e.g. 600, 10m)",
        flag=True,
    ),
    Setting(
        "root_ttl",
        "cache",
        "root_ttl",
        parse_duration,
        "how long the /simple/ project list is fresh (it is large)",
    ),
    Setting(
        "negative_ttl",
        "cache",
        "negative_ttl",
        parse_duration,
        "how long an upstream 404 is remembered",
    ),
    Setting(
        "max_stale",
        "cache",
        "max_stale",
        parse_duration,
        "how old a cached page may be when served because upstream fails",
    ),
    Setting(
        "max_size",
        "cache",
        "max_size",
        parse_size,
        "largest total size of cached files (e.g. 50GB; 0 = unlimited)",
    ),
    Setting(
        "scrub_rate",
        "cache",
        "scrub_rate",
        parse_size,
        "bytes per second re-hashed by the background integrity scrub (0 = off)",
    ),
    Setting(
        "deny",
        "policy",
        "deny",
        parse_project_patterns,
        "projects never served (names or patterns like 'evil-*'); reason 'policy'",
    ),
    Setting(
        "upstream",
        "upstream",
        "url",
        parse_index_url,
        "upstream simple index URL",
        flag=True,
        metavar="URL",
    ),
    Setting(
        "connect_timeout",
        "upstream",
        "connect_timeout",
        parse_duration,
        "upstream connect timeout",
    ),
    Setting(
        "read_timeout",
        "upstream",
        "read_timeout",
        parse_duration,
        "upstream idle read timeout",
    ),
    Setting(
        "page_timeout",
        "upstream",
        "page_timeout",
        parse_duration,
        "total time allowed for one upstream index page fetch",
    ),
    Setting(
        "retries",
        "upstream",
        "retries",
        _parse_int,
        "extra attempts for a failed upstream fetch (connection errors, timeouts, 429, 5xx)",
    ),
    Setting(
        "retry_max_time",
        "upstream",
        "retry_max_time",
        parse_duration,
        "longest total time spent retrying one fetch",
    ),
    Setting(
        "down_after",
        "upstream",
        "down_after",
        parse_positive_int,
        "consecutive failures after which the upstream is marked down",
    ),
    Setting(
        "down_cooldown",
        "upstream",
        "down_cooldown",
        parse_duration,
        "how long a down upstream is skipped before it is probed again",
    ),
    Setting(
        "proxy",
        "upstream",
        "proxy",
        parse_proxies,
        "corporate proxy URL, or an ordered list tried in turn (default: HTTP(S)_PROXY)",
        flag=True,
        metavar="URL",
    ),
    Setting(
        "proxy_auth_env",
        "upstream",
        "proxy_auth_env",
        parse_optional_text,
        "name of an environment variable holding proxy credentials as user:password",
    ),
    Setting(
        "proxy_auth_file",
        "upstream",
        "proxy_auth_file",
        parse_optional_path,
        "file holding proxy credentials as user:password (e.g. a Docker secret)",
    ),
    Setting(
        "proxy_cooldown",
        "upstream",
        "proxy_cooldown",
        parse_duration,
        "how long a failing proxy is skipped",
    ),
    Setting(
        "ca_bundle",
        "upstream",
        "ca_bundle",
        parse_optional_path,
        "PEM file of CA certificates for upstream TLS (a TLS-intercepting proxy's CA)",
    ),
    Setting(
        "ca_bundle_mode",
        "upstream",
        "ca_bundle_mode",
        parse_ca_mode,
        "add: system CAs plus ca_bundle; replace: only ca_bundle",
    ),
    Setting(
        "client_cert",
        "upstream",
        "client_cert",
        parse_optional_path,
        "client certificate (PEM) for mutual TLS",
    ),
    Setting(
        "client_key",
        "upstream",
        "client_key",
        parse_optional_path,
        "private key (PEM) of client_cert",
    ),
    Setting(
        "verify",
        "upstream",
        "verify",
        parse_bool,
        "verify upstream TLS certificates (false is insecure and loudly reported)",
    ),
    Setting(
        "username",
        "upstream",
        "username",
        parse_optional_text,
        "user name for HTTP basic auth to a private index",
    ),
    Setting(
        "password_env",
        "upstream",
        "password_env",
        parse_optional_text,
        "name of an environment variable holding the basic-auth password",
    ),
    Setting(
        "password_file",
        "upstream",
        "password_file",
        parse_optional_path,
        "file holding the basic-auth password",
    ),
    Setting(
        "token_env",
        "upstream",
        "token_env",
        parse_optional_text,
        "name of an environment variable holding a bearer token",
    ),
    Setting(
        "token_file",
        "upstream",
        "token_file",
        parse_optional_path,
        "file holding a bearer token",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Secrets:
    """Credentials and the proxy environment, read once at start-up.

    ``repr`` shows no value, so a logged or printed Config never leaks them.
    """

    proxy_auth: tuple[str, str] | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    #: ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (either case), honoured when no
    #: ``proxy`` is configured.
    env_proxies: dict[str, str] = field(default_factory=dict, repr=False)
    #: ``REQUESTS_CA_BUNDLE`` (``SSL_CERT_FILE`` is honoured by the ssl module itself).
    env_ca_bundle: Path | None = None


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
    cache_dir: Path = field(default_factory=default_cache_dir)
    index_ttl: float = 600.0
    root_ttl: float = 3600.0
    negative_ttl: float = 60.0
    max_stale: float = 86400.0
    max_size: int = 0
    scrub_rate: int = 0
    deny: tuple[str, ...] = ()
    upstream: str = "https://pypi.org/simple/"
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
    #: Where the values came from, for ``pipgate doctor`` and start-up logs.
    config_file: Path | None = None
    #: Secrets and proxy environment resolved at load time (never printed).
    secrets: Secrets = field(default_factory=lambda: Secrets())


def load_config(
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults < TOML < env < flags into a :class:`Config`.

    ``flags`` maps setting names to raw values (``None`` = not given on the command
    line). Raises :class:`ConfigError` with a one-line message naming the key.
    """
    env = os.environ if env is None else env
    flags = flags or {}
    values: dict[str, Any] = {}

    path_raw = config_file if config_file is not None else env.get(ENV_PREFIX + "CONFIG")
    path = Path(path_raw).expanduser() if path_raw else None
    if path is not None:
        values.update(_read_toml(path))

    for setting in SETTINGS:
        raw = env.get(setting.env_var)
        if raw is not None and raw != "":
            values[setting.name] = _parse(setting, raw, setting.env_var)

    for name, raw in flags.items():
        if raw is None:
            continue
        setting = _BY_NAME[name]
        values[name] = _parse(setting, raw, setting.option)

    config = Config(**values, config_file=path)
    _check_consistency(config)
    return replace(config, secrets=_resolve_secrets(config, env))


def _resolve_secrets(config: Config, env: Mapping[str, str]) -> Secrets:
    """Read credentials from the environment variables and files the config names."""
    proxy_auth = None
    raw = _secret(env, config.proxy_auth_env, config.proxy_auth_file, "proxy_auth")
    if raw is not None:
        user, sep, password = raw.partition(":")
        if not sep or not user:
            raise ConfigError("upstream.proxy_auth_env/proxy_auth_file: expected user:password")
        proxy_auth = (user, password)
    basic_auth = None
    secret = _secret(env, config.password_env, config.password_file, "password")
    if secret is not None:
        if not config.username:
            raise ConfigError("upstream.username: required with password_env/password_file")
        basic_auth = (config.username, secret)
    token = _secret(env, config.token_env, config.token_file, "token")
    if token is not None and basic_auth is not None:
        raise ConfigError("upstream: configure either a password or a token, not both")
    env_proxies = {
        key.lower(): value
        for key, value in env.items()
        if key.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy") and value
    }
    ca_env = env.get("REQUESTS_CA_BUNDLE")
    return Secrets(
        proxy_auth=proxy_auth,
        basic_auth=basic_auth,
        token=token,
        env_proxies=env_proxies,
        env_ca_bundle=Path(ca_env) if ca_env else None,
    )


def _secret(
    env: Mapping[str, str], env_name: str | None, path: Path | None, what: str
) -> str | None:
    if env_name and path:
        raise ConfigError(f"upstream.{what}_env and upstream.{what}_file: set only one")
    if env_name:
        value = env.get(env_name)
        if value is None:
            raise ConfigError(f"upstream.{what}_env: environment variable {env_name} is not set")
        return value.strip()
    if path:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"upstream.{what}_file: cannot read {path} ({reason})") from None
    return None


def _parse(setting: Setting, raw: Any, where: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None

    by_toml = {s.toml_key: s for s in SETTINGS}
    sections = {s.section for s in SETTINGS}
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if section == "upstream" and isinstance(table, list):
            # ``[[upstream]]`` array form: one entry for now.
            if len(table) != 1:
                raise ConfigError(f"{path}: [[upstream]]: exactly one upstream is supported")
            table = table[0]
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: expected a table")
        for key, raw in table.items():
            setting = by_toml.get(f"{section}.{key}")
            if setting is None:
                raise ConfigError(f"{path}: unknown key {section}.{key}")
            values[setting.name] = _parse(setting, raw, f"{section}.{key}")
    return values


def _check_consistency(config: Config) -> None:
    if config.retries < 0 or config.retries > 10:
        raise ConfigError("upstream.retries: expected 0-10")
    for name in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"upstream.{name}: no such file {path}")
    if config.ca_bundle_mode == "replace" and config.ca_bundle is None:
        raise ConfigError("upstream.ca_bundle_mode: replace needs upstream.ca_bundle")
    if (config.client_cert is None) != (config.client_key is None) and config.client_cert is None:
        raise ConfigError("upstream.client_key: needs upstream.client_cert")
    for name in ("connect_timeout", "read_timeout", "page_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{_BY_NAME[name].toml_key}: must be greater than 0")
