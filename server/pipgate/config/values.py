"""Value parsers for configuration: each takes a raw value (TOML-typed or a string from
the environment or a flag) and returns the typed value or raises ``ValueError`` with a
short reason. Pure; the caller adds the key's name to the message.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from pipgate.simple.names import normalize

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
    value = parse_int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port 0-65535, got {raw!r}")
    return value


def parse_positive_int(raw: Any) -> int:
    """An integer of at least 1."""
    value = parse_int(raw)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {raw!r}")
    return value


def parse_int(raw: Any) -> int:
    """An integer (TOML integer or decimal text)."""
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def parse_rate(raw: Any) -> float:
    """Events per second, ``0`` meaning no limit (``20``, ``"2.5"``)."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a number per second, got {raw!r}")
    try:
        value = float(str(raw).strip()) if not isinstance(raw, (int, float)) else float(raw)
    except ValueError:
        raise ValueError(f"expected a number per second, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a finite number >= 0, got {raw!r}")
    return value


def parse_index_url(raw: Any) -> str:
    """An http(s) simple-index URL, or a ``file:///`` one (a ``pipgate export``
    directory), normalised to end in ``/``."""
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                "expected a file URL of an absolute path like file:///mnt/export/simple/"
            )
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an http:// or https:// URL like https://pypi.org/simple/ "
            "(or file:///path/simple/ for an export)"
        )
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
    """Project names or ``fnmatch`` globs (TOML array, or comma-separated text), PEP 503
    normalised so that ``corp_*`` and ``Corp-*`` mean the same as ``corp-*``."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    patterns = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not all(c.isalnum() or c in "-_.*?[]!" for c in text):
            raise ValueError(f"expected project names or patterns like 'evil-*', got {item!r}")
        patterns.append(normalize(text))
    return tuple(patterns)


def parse_required_patterns(raw: Any) -> tuple[str, ...]:
    """Like :func:`parse_project_patterns`, but at least one is needed."""
    patterns = parse_project_patterns(raw)
    if not patterns:
        raise ValueError("expected at least one project name or pattern")
    return patterns


_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def parse_upstream_name(raw: Any) -> str:
    """An upstream's name: letters, digits, ``.``, ``_``, ``-``, ``:``; at most 64.

    It is a metric label value and part of cache keys, so it is short and plain.
    """
    text = str(raw).strip()
    if not _UPSTREAM_NAME.match(text):
        raise ValueError(f"expected a short name like 'internal' or 'pypi', got {raw!r}")
    return text


def parse_upstream_names(raw: Any) -> tuple[str, ...]:
    """A non-empty list of upstream names (TOML array, or comma-separated text)."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    names = tuple(parse_upstream_name(item) for item in items if str(item).strip())
    if not names:
        raise ValueError("expected at least one upstream name")
    if len(set(names)) != len(names):
        raise ValueError("lists an upstream twice")
    return names


def parse_origins(raw: Any) -> tuple[str, ...]:
    """Origins like ``https://files.example.com``, ``http://10.0.0.5:8080`` or
    ``https://*.cdn.example.com`` (any subdomain), normalised to lowercase without a
    default port."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    origins = []
    for item in items:
        text = str(item).strip().rstrip("/")
        if not text:
            continue
        wildcard = "://*." in text
        try:
            parts = urlsplit(text.replace("://*.", "://", 1))
            port = parts.port
        except ValueError:
            raise ValueError(
                f"expected an origin like https://files.example.com, got {item!r}"
            ) from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(
                f"expected an origin (scheme and host, no path) like "
                f"https://files.example.com, got {item!r}"
            )
        host = ("*." if wildcard else "") + parts.hostname.lower()
        default = 443 if parts.scheme == "https" else 80
        netloc = host if port in (None, default) else f"{host}:{port}"
        origins.append(f"{parts.scheme}://{netloc}")
    return tuple(origins)


def parse_optional_origins(raw: Any) -> tuple[str, ...] | None:
    """:func:`parse_origins`; the text ``default`` keeps the built-in list."""
    if isinstance(raw, str) and raw.strip().lower() == "default":
        return None
    return parse_origins(raw)


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


def parse_optional_duration(raw: Any) -> float | None:
    """A duration, or empty for "not set here" (the wider setting applies)."""
    if isinstance(raw, str) and not raw.strip():
        return None
    return parse_duration(raw)


def parse_optional_timestamp(raw: Any) -> float | None:
    """An RFC 3339 time (``2026-03-24T00:00:00Z``; a TOML date-time too) as a Unix
    time, or empty for none. A time without a zone is read as UTC."""
    if isinstance(raw, datetime):
        moment = raw
    else:
        text = str(raw).strip()
        if not text:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected a time like 2026-03-24T00:00:00Z, got {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_action(raw: Any) -> str:
    """``allow`` or ``deny``."""
    text = str(raw).strip().lower()
    if text not in ("allow", "deny"):
        raise ValueError(f"expected allow or deny, got {raw!r}")
    return text


def parse_text(raw: Any) -> str:
    """A one-line text (a reason shown to users)."""
    text = str(raw).strip()
    if any(c in text for c in "\r\n\x00"):
        raise ValueError("must be one line")
    if len(text) > 300:
        raise ValueError("must be at most 300 characters")
    return text


def parse_rule_name(raw: Any) -> str:
    """A short rule name for messages: letters, digits, ``.``, ``_``, ``-``."""
    text = str(raw).strip()
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", text):
        raise ValueError(f"expected a short name like 'old-requests', got {raw!r}")
    return text


def parse_specifier(raw: Any) -> str:
    """A PEP 440 specifier set that at least one version can satisfy.

    Raises ``ValueError`` for bad syntax and for sets no version satisfies (a rule
    that can never match is a mistake the operator should hear about).
    """
    text = str(raw).strip()
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        raise ValueError(f"not a PEP 440 version specifier: {text!r}") from None
    if not any(spec.contains(v, prereleases=True) for v in _candidates(spec)):
        raise ValueError(f"no version can satisfy {text!r}, so the rule can never match")
    return str(spec)


def _candidates(spec: SpecifierSet) -> list[Version]:
    """Versions at and around every bound of ``spec``: if any version satisfies a set
    of bounds, one of these does."""
    found = [Version("0"), Version("999999")]
    for clause in spec:
        text = clause.version.replace(".*", "")
        try:
            base = Version(text)
        except InvalidVersion:
            continue
        release = base.release
        found.append(base)
        found += [
            Version(f"{text}.1"),
            Version(f"{text}.post1") if base.post is None else base,
            Version(f"{text}.dev0") if base.dev is None else base,
            Version(".".join(map(str, (*release[:-1], release[-1] + 1)))),
        ]
        if release[-1] > 0:
            lower = (*release[:-1], release[-1] - 1)
            found.append(Version(".".join(map(str, lower)) + ".999"))
    return found


def parse_storage_kind(raw: Any) -> str:
    """``disk`` (this host's cache directory only), ``s3`` (a shared bucket behind it)
    or ``directory`` (a shared mounted directory behind it)."""
    text = str(raw).strip().lower()
    if text not in ("disk", "s3", "directory"):
        raise ValueError(f"expected disk, s3 or directory, got {raw!r}")
    return text


def parse_coordination_kind(raw: Any) -> str:
    """``local`` (one host) or ``redis`` (leases and shared state across replicas)."""
    text = str(raw).strip().lower()
    if text not in ("local", "redis"):
        raise ValueError(f"expected local or redis, got {raw!r}")
    return text


def parse_optional_endpoint(raw: Any) -> str | None:
    """An http(s) service URL (an S3 endpoint), or empty for the service's default."""
    text = str(raw).strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL like http://127.0.0.1:8333")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (use the *_env or *_file keys)")
    return text.rstrip("/")


def parse_bucket(raw: Any) -> str:
    """An S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)."""
    text = str(raw).strip()
    if text and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", text):
        raise ValueError(f"expected an S3 bucket name like pipgate-cache, got {raw!r}")
    return text


def parse_key_prefix(raw: Any) -> str:
    """A key prefix (``team-a/``), or empty; no leading slash, no ``..``."""
    text = str(raw).strip()
    if text.startswith("/") or ".." in text.split("/") or any(c.isspace() for c in text):
        raise ValueError(f"expected a prefix like pipgate/ (no leading /, no ..), got {raw!r}")
    return text if not text or text.endswith("/") else text + "/"


def parse_redis_url(raw: Any) -> str | None:
    """A ``redis://`` or ``rediss://`` URL without a password, or empty."""
    text = str(raw).strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("expected a URL like redis://redis:6379/0 (rediss:// for TLS)")
    if parts.password:
        raise ValueError("must not carry a password (use coordination.password_env or _file)")
    return text


def parse_replica_name(raw: Any) -> str:
    """A replica's name (a metrics label): letters, digits, ``.``, ``_``, ``-``."""
    text = str(raw).strip()
    if text and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", text):
        raise ValueError(f"expected a name like pipgate-1 (letters, digits, . _ -), got {raw!r}")
    return text
