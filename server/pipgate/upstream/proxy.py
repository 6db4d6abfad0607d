"""Which corporate proxy a request goes through, and what to do when one fails.

Configured proxies are tried in order; a proxy that fails (cannot connect, refuses
CONNECT, answers 5xx to CONNECT) is skipped for ``proxy_cooldown`` while others work,
and tried again last if nothing else is left. With no proxy configured, the standard
``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` and ``NO_PROXY`` variables (either case,
captured once at start-up) apply, including ``NO_PROXY`` suffixes, ``*``, ports and
CIDR ranges.
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from pipgate.redact import upstream_label


def basic_authorization(user: str, password: str) -> str:
    """An ``Authorization``/``Proxy-Authorization`` value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class Proxy:
    """One proxy: its URL without credentials, and the credentials to send it."""

    url: str
    #: ``(user, password)``; never part of ``repr`` or of any URL pipgate prints.
    auth: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` header value, if the proxy has credentials."""
        return basic_authorization(*self.auth) if self.auth else None

    @property
    def label(self) -> str:
        """``host:port`` for logs and metric labels (never credentials)."""
        return upstream_label(self.url)


def make_proxy(url: str, auth: tuple[str, str] | None = None) -> Proxy:
    """Split credentials out of a proxy URL; explicit ``auth`` wins over the URL's."""
    parts = urlsplit(url)
    if auth is None and parts.username is not None:
        from urllib.parse import unquote

        auth = (unquote(parts.username), unquote(parts.password or ""))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return Proxy(url=clean, auth=auth)


def bypasses_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host`` (suffix, exact, ``*``, ``host:port``, CIDR)."""
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = entry, None
        if entry.count(":") == 1 and not entry.startswith("["):
            entry_host, _, port_text = entry.partition(":")
            entry_port = int(port_text) if port_text.isdigit() else None
        entry_host = entry_host.strip("[]")
        if entry_port is not None and port is not None and entry_port != port:
            continue
        if "/" in entry_host:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry_host, strict=False):
                    return True
            except ValueError:
                continue
            continue
        suffix = entry_host.lstrip(".")
        if host == suffix or host.endswith("." + suffix):
            return True
    return False


class ProxyChooser:
    """Orders the proxies for each request and remembers which ones failed."""

    def __init__(
        self,
        configured: Sequence[str],
        *,
        auth: tuple[str, str] | None,
        env: Mapping[str, str],
        cooldown: float,
    ) -> None:
        self._configured = [make_proxy(url, auth) for url in configured]
        self._env = env
        self._env_auth = auth
        self._cooldown = cooldown
        self._failed_until: dict[str, float] = {}

    @property
    def proxies(self) -> list[Proxy]:
        """The configured proxies (empty when the environment decides)."""
        return list(self._configured)

    def for_url(self, url: str) -> list[Proxy | None]:
        """Proxies to try for ``url``, in order; ``[None]`` means connect directly."""
        parts = urlsplit(url)
        if self._configured:
            candidates = self._configured
        else:
            env_url = self._env.get(f"{parts.scheme}_proxy") or self._env.get("all_proxy")
            if not env_url:
                return [None]
            no_proxy = self._env.get("no_proxy", "")
            if no_proxy and bypasses_proxy(parts.hostname or "", parts.port, no_proxy):
                return [None]
            candidates = [make_proxy(env_url, self._env_auth)]
        now = time.monotonic()
        healthy = [p for p in candidates if self._failed_until.get(p.url, 0.0) <= now]
        cooling = [p for p in candidates if p not in healthy]
        return [*healthy, *cooling]

    def failed(self, proxy: Proxy) -> None:
        """Skip ``proxy`` for the cool-down period."""
        self._failed_until[proxy.url] = time.monotonic() + self._cooldown

    def succeeded(self, proxy: Proxy) -> None:
        """``proxy`` works again."""
        self._failed_until.pop(proxy.url, None)

    def is_up(self, proxy: Proxy) -> bool:
        """Whether ``proxy`` is not in its cool-down period."""
        return self._failed_until.get(proxy.url, 0.0) <= time.monotonic()
