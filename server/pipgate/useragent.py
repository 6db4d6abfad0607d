"""What an installer says about itself in its ``User-Agent``. Pure; never raises.

pip and uv send ``<name>/<version> {json}``, the JSON holding the installer, the Python
version and implementation, the OS, libc, CPU and a CI flag; poetry and pdm send at
least ``<name>/<version>``. Anything else is ``other``, with what could be read.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

#: The ``installer`` values (a closed set: it may become a metric label).
INSTALLERS = ("pip", "uv", "poetry", "pdm", "other")
#: Longest User-Agent read (pip's is ~400 bytes).
MAX_LENGTH = 4096
_PRODUCT = re.compile(r"^([A-Za-z][A-Za-z0-9._-]{0,40})/([A-Za-z0-9.+!_-]{1,40})")
_PYTHON = re.compile(r"(?:CPython|Python|python)[/ ]([0-9]+\.[0-9]+(?:\.[0-9]+)?)")
_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]{1,40}$")


@dataclass(frozen=True)
class ClientInfo:
    """The parts of a User-Agent pipgate uses; ``None`` where it said nothing."""

    installer: str = "other"
    installer_version: str | None = None
    python: str | None = None
    implementation: str | None = None
    system: str | None = None
    cpu: str | None = None
    libc: str | None = None
    libc_version: str | None = None
    #: The OS release as the installer names it (macOS ``14.2.1``, Debian ``12``).
    distro_version: str | None = None
    ci: bool | None = None


@functools.lru_cache(maxsize=1024)
def parse_user_agent(value: str | None) -> ClientInfo:
    """The :class:`ClientInfo` of a User-Agent header (unknown parts left ``None``);
    memoised: a build farm sends the same few strings all day."""
    if not value:
        return ClientInfo()
    text = value[:MAX_LENGTH]
    product = _PRODUCT.match(text)
    name = product.group(1).lower() if product else ""
    version = product.group(2) if product else None
    data = _json_part(text)
    installer = _object(data, "installer")
    name = _text(installer.get("name"), name).lower()
    version = _version(installer.get("version")) or version
    implementation = _object(data, "implementation")
    system = _object(data, "system")
    distro = _object(data, "distro")
    # pip and uv put libc inside "distro"; look at the top level too.
    libc = _object(distro, "libc") or _object(data, "libc")
    python = _version(data.get("python")) or _version(implementation.get("version"))
    if python is None and (match := _PYTHON.search(text)):
        python = match.group(1)
    ci = data.get("ci")
    return ClientInfo(
        installer=name if name in INSTALLERS else "other",
        installer_version=version,
        python=python,
        implementation=_text(implementation.get("name")),
        system=_text(system.get("name")),
        cpu=_text(data.get("cpu")),
        libc=_text(libc.get("lib")),
        libc_version=_version(libc.get("version")),
        distro_version=_version(distro.get("version")),
        ci=ci if isinstance(ci, bool) else None,
    )


def _json_part(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        data = json.loads(text[start:])
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _text(value: object, default: str | None = None) -> Any:
    if isinstance(value, str) and value.strip() and len(value) <= 80:
        return value.strip()
    return default


def _version(value: object) -> str | None:
    return value if isinstance(value, str) and _VERSION.match(value) else None
