"""Merge the configuration sources into one frozen :class:`Config`.

Sources, lowest to highest precedence: built-in defaults < TOML file (``--config`` or
``PIPGATE_CONFIG``) < ``PIPGATE_<NAME>`` environment variables < command-line flags.
Upstream keys in the environment or on the command line set the first upstream, so the
single-upstream deployments of before (``--upstream``, ``PIPGATE_PROXY``, one
``[upstream]`` table) keep working unchanged. Every bad value becomes a one-line
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pipgate.config.schema import (
    ENV_PREFIX,
    FLEET_SETTINGS,
    POLICY_RULE_SETTINGS,
    ROUTE_SETTINGS,
    SERVER_SETTINGS,
    UPSTREAM_SETTINGS,
    Config,
    PolicyRule,
    RouteConfig,
    Secrets,
    Setting,
    UpstreamConfig,
)


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what is wrong."""


_SERVER_WIDE = SERVER_SETTINGS + FLEET_SETTINGS
_BY_NAME = {s.name: s for s in _SERVER_WIDE + UPSTREAM_SETTINGS}
_TABLES = {"server", "cache", "policy", "limits", "auth", "storage", "coordination"}


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
    path_raw = config_file if config_file is not None else env.get(ENV_PREFIX + "CONFIG")
    path = Path(path_raw).expanduser() if path_raw else None

    server: dict[str, Any] = {}
    upstreams: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    if path is not None:
        server, upstreams, routes, rules = _read_toml(path)

    first: dict[str, Any] = {}
    for setting in _SERVER_WIDE + UPSTREAM_SETTINGS:
        raw = env.get(setting.env_var) if setting.env_var else None
        if raw is not None and raw != "":
            target = server if setting in _SERVER_WIDE else first
            target[setting.field] = _parse(setting, raw, setting.env_var or setting.name)
    for name, raw in flags.items():
        if raw is None:
            continue
        setting = _BY_NAME[name]
        target = server if setting in _SERVER_WIDE else first
        target[setting.field] = _parse(setting, raw, setting.option)
    if first:
        if not upstreams:
            upstreams.append({})
        upstreams[0].update(first)
    if not upstreams:
        upstreams.append({})

    single = len(upstreams) == 1
    built = tuple(
        _build_upstream(values, env, "upstream" if single else None, number)
        for number, values in enumerate(upstreams, 1)
    )
    _check_names(built)
    config = Config(
        **server,
        upstreams=built,
        routes=tuple(_build_route(values, built, n) for n, values in enumerate(routes, 1)),
        config_file=path,
    )
    _check_server(config)
    config = replace(
        config,
        admin_token=_secret(
            env, config.admin_token_env, config.admin_token_file, "admin_token", "auth"
        ),
    )
    if config.admin_token is not None and len(config.admin_token) < 16:
        raise ConfigError("auth.admin_token: must be at least 16 characters long")
    config = _build_fleet(config, env)
    return replace(
        config,
        policy_rules=tuple(_build_rule(values, config, n) for n, values in enumerate(rules, 1)),
    )


# --- the fleet ------------------------------------------------------------------------------


def _build_fleet(config: Config, env: Mapping[str, str]) -> Config:
    """Check ``[storage]`` and ``[coordination]`` together and read their secrets."""
    kind = config.storage_kind
    if kind == "s3" and not config.s3_bucket:
        raise ConfigError("storage.bucket: required when storage.kind = s3")
    if kind == "directory" and config.shared_directory is None:
        raise ConfigError("storage.directory: required when storage.kind = directory")
    if config.s3_ca_bundle is not None and not config.s3_ca_bundle.is_file():
        raise ConfigError(f"storage.ca_bundle: no such file {config.s3_ca_bundle}")
    if config.lease_ttl < 1:
        raise ConfigError("coordination.lease_ttl: must be at least 1s")
    redis = config.coordination_kind == "redis"
    if redis and config.redis_url is None:
        raise ConfigError("coordination.url: required when coordination.kind = redis")
    secret = _secret(
        env, config.fleet_secret_env, config.fleet_secret_file, "secret", "coordination"
    )
    if redis and secret is None:
        raise ConfigError(
            "coordination.secret_env or coordination.secret_file: required when "
            "coordination.kind = redis (replicas stream files to each other with it)"
        )
    if secret is not None and len(secret) < 16:
        raise ConfigError("coordination.secret: must be at least 16 characters long")
    access = _secret(
        env, config.s3_access_key_env, config.s3_access_key_file, "access_key", "storage"
    )
    secret_key = _secret(
        env, config.s3_secret_key_env, config.s3_secret_key_file, "secret_key", "storage"
    )
    if (access is None) != (secret_key is None):
        raise ConfigError(
            "storage.access_key_* and storage.secret_key_*: set both or neither "
            "(neither: the AWS_* environment variables or the instance's role)"
        )
    replica = config.replica or _default_replica()
    return replace(
        config,
        replica=replica,
        fleet_secret=secret,
        s3_access_key=access,
        s3_secret_key=secret_key,
        redis_password=_secret(
            env, config.redis_password_env, config.redis_password_file, "password", "coordination"
        ),
    )


def _default_replica() -> str:
    """The host name, cut to a valid replica name (a container's host name is its id)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63].strip(".-_")
    return name or "pipgate"


# --- one upstream --------------------------------------------------------------------------


def _build_upstream(
    values: dict[str, Any], env: Mapping[str, str], where: str | None, number: int
) -> UpstreamConfig:
    """The slice of one upstream, with its credentials resolved and checked."""
    url = values.get("url", UpstreamConfig.url)
    name = values.get("name") or UpstreamConfig(url=url).name
    prefix = where or f"upstream[{name}]"
    clean_url, url_auth = split_credentials(url)
    upstream = UpstreamConfig(**{**values, "url": clean_url, "name": name})
    _check_upstream(upstream, prefix)
    secrets = _resolve_secrets(upstream, env, prefix, url_auth)
    return replace(upstream, secrets=secrets)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@``, and those credentials (URL-decoded).

    pip users write private indexes that way; pipgate turns them into basic auth for
    the index's origin (pages and files alike) and never prints them.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    auth = (unquote(parts.username), unquote(parts.password or ""))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), auth


def _check_server(config: Config) -> None:
    """Server-wide values that only make sense together."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("server.tls_cert and server.tls_key: set both or neither")
    for name, key in (
        ("tls_cert", "server.tls_cert"),
        ("tls_key", "server.tls_key"),
        ("htpasswd", "auth.htpasswd"),
        ("read_tokens", "auth.tokens"),
    ):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{key}: no such file {path}")
    for name in ("keepalive_timeout", "send_timeout", "list_timeout"):
        if getattr(config, name) <= 0:
            table = "limits" if name == "list_timeout" else "server"
            raise ConfigError(f"{table}.{name}: must be greater than 0")
    if config.max_page_size < 1 << 16 or config.max_list_size < 1 << 16:
        raise ConfigError("limits.max_page_size/max_list_size: must be at least 64KiB")


def _check_upstream(upstream: UpstreamConfig, prefix: str) -> None:
    if upstream.retries < 0 or upstream.retries > 10:
        raise ConfigError(f"{prefix}.retries: expected 0-10")
    for name in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(upstream, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{prefix}.{name}: no such file {path}")
    if upstream.ca_bundle_mode == "replace" and upstream.ca_bundle is None:
        raise ConfigError(f"{prefix}.ca_bundle_mode: replace needs {prefix}.ca_bundle")
    if upstream.client_key is not None and upstream.client_cert is None:
        raise ConfigError(f"{prefix}.client_key: needs {prefix}.client_cert")
    for name in ("connect_timeout", "read_timeout", "page_timeout"):
        if getattr(upstream, name) <= 0:
            raise ConfigError(f"{prefix}.{name}: must be greater than 0")


def _resolve_secrets(
    upstream: UpstreamConfig,
    env: Mapping[str, str],
    prefix: str,
    url_auth: tuple[str, str] | None,
) -> Secrets:
    """Read credentials from the environment variables and files the slice names."""
    proxy_auth = None
    raw = _secret(env, upstream.proxy_auth_env, upstream.proxy_auth_file, "proxy_auth", prefix)
    if raw is not None:
        user, sep, password = raw.partition(":")
        if not sep or not user:
            raise ConfigError(f"{prefix}.proxy_auth_env/proxy_auth_file: expected user:password")
        proxy_auth = (user, password)
    basic_auth = None
    secret = _secret(env, upstream.password_env, upstream.password_file, "password", prefix)
    if secret is not None:
        if not upstream.username:
            raise ConfigError(f"{prefix}.username: required with password_env/password_file")
        basic_auth = (upstream.username, secret)
    token = _secret(env, upstream.token_env, upstream.token_file, "token", prefix)
    if token is not None and basic_auth is not None:
        raise ConfigError(f"{prefix}: configure either a password or a token, not both")
    if url_auth is not None:
        if basic_auth is not None or token is not None:
            raise ConfigError(
                f"{prefix}.url: has credentials, and so does password_*/token_*: keep one"
            )
        basic_auth = url_auth
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
    env: Mapping[str, str], env_name: str | None, path: Path | None, what: str, prefix: str
) -> str | None:
    if env_name and path:
        raise ConfigError(f"{prefix}.{what}_env and {prefix}.{what}_file: set only one")
    if env_name:
        value = env.get(env_name)
        if value is None:
            raise ConfigError(f"{prefix}.{what}_env: environment variable {env_name} is not set")
        return value.strip()
    if path:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"{prefix}.{what}_file: cannot read {path} ({reason})") from None
    return None


def _check_names(upstreams: tuple[UpstreamConfig, ...]) -> None:
    seen: set[str] = set()
    for upstream in upstreams:
        if upstream.name in seen:
            raise ConfigError(
                f"upstream[{upstream.name}].name: two upstreams are called {upstream.name!r}; "
                "give each a distinct name"
            )
        seen.add(upstream.name)


# --- routes -------------------------------------------------------------------------------


def _build_route(
    values: dict[str, Any], upstreams: tuple[UpstreamConfig, ...], number: int
) -> RouteConfig:
    where = f"route[{number}]"
    for setting in ROUTE_SETTINGS[:2]:
        if setting.field not in values:
            raise ConfigError(f"{where}.{setting.key}: required")
    known = {u.name for u in upstreams}
    for name in values["upstreams"]:
        if name not in known:
            raise ConfigError(
                f"{where}.upstreams: no upstream is called {name!r} "
                f"(configured: {', '.join(sorted(known))})"
            )
    return RouteConfig(**values)


# --- policy rules ----------------------------------------------------------------------------


def _build_rule(values: dict[str, Any], config: Config, number: int) -> PolicyRule:
    """One ``[[policy.rule]]``, refused when it can never match or does nothing."""
    name = values.pop("name", None) or f"#{number}"
    where = f"policy.rule[{name if name[0] != '#' else number}]"
    if "projects" not in values:
        raise ConfigError(f"{where}.projects: required")
    cooldown = "min_age" in values or "exclude_newer" in values
    action = values.get("action")
    if action is None and not cooldown:
        raise ConfigError(f"{where}: needs an action (allow or deny) or min_age/exclude_newer")
    if action == "allow" and config.policy_default == "allow" and not cooldown:
        raise ConfigError(
            f'{where}.action: allow has no effect unless [policy] default = "deny" (an allow-list)'
        )
    known = {u.name for u in config.upstreams}
    for upstream in values.get("upstreams", ()):
        if upstream not in known:
            raise ConfigError(
                f"{where}.upstreams: no upstream is called {upstream!r} "
                f"(configured: {', '.join(sorted(known))})"
            )
    if values.get("upstreams"):
        _check_reachable(values["projects"], values["upstreams"], config, where)
    return PolicyRule(name=name, **values)


def _check_reachable(
    projects: tuple[str, ...], upstreams: tuple[str, ...], config: Config, where: str
) -> None:
    """A rule scoped to upstreams that the routes never send its (exact) projects to
    can never match."""
    from pipgate.pages.routing import RoutingTable

    table = RoutingTable([u.name for u in config.upstreams], config.routes)
    for project in projects:
        if any(c in project for c in "*?["):
            continue
        routed = table.route_for(project).upstreams
        if not set(routed) & set(upstreams):
            raise ConfigError(
                f"{where}: can never match: {project} comes only from "
                f"{', '.join(routed)} (see [[route]]), not from {', '.join(upstreams)}"
            )


# --- TOML -----------------------------------------------------------------------------------


def _read_toml(
    path: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(server values, one dict per upstream, per route, per policy rule)``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None

    server: dict[str, Any] = {}
    upstreams: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for section, table in data.items():
        if section in _TABLES:
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {section}: expected a table")
            if section == "policy" and "rule" in table:
                table = dict(table)
                entries = table.pop("rule")
                if not isinstance(entries, list):
                    raise ConfigError(f"{path}: policy.rule: expected [[policy.rule]] tables")
                for number, entry in enumerate(entries, 1):
                    where = f"policy.rule[{number}]"
                    if not isinstance(entry, dict):
                        raise ConfigError(f"{path}: {where}: expected a table")
                    rules.append(_table(path, entry, POLICY_RULE_SETTINGS, "policy.rule", where))
            server.update(_table(path, table, _SERVER_WIDE, section, section))
        elif section == "upstream":
            entries = table if isinstance(table, list) else [table]
            for number, entry in enumerate(entries, 1):
                where = "upstream" if not isinstance(table, list) else f"upstream[{number}]"
                if not isinstance(entry, dict):
                    raise ConfigError(f"{path}: {where}: expected a table")
                upstreams.append(_table(path, entry, UPSTREAM_SETTINGS, "upstream", where))
        elif section == "route":
            if not isinstance(table, list):
                raise ConfigError(f"{path}: route: expected [[route]] tables")
            for number, entry in enumerate(table, 1):
                if not isinstance(entry, dict):
                    raise ConfigError(f"{path}: route[{number}]: expected a table")
                routes.append(_table(path, entry, ROUTE_SETTINGS, "route", f"route[{number}]"))
        else:
            raise ConfigError(f"{path}: unknown section [{section}]")
    return server, upstreams, routes, rules


def _table(
    path: Path, table: dict[str, Any], settings: tuple[Setting, ...], name: str, where: str
) -> dict[str, Any]:
    by_key = {s.key: s for s in settings if s.table == name}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        setting = by_key.get(key)
        if setting is None:
            raise ConfigError(f"{path}: unknown key {where}.{key}")
        values[setting.field] = _parse(setting, raw, f"{where}.{key}")
    return values


def _parse(setting: Setting, raw: Any, where: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
