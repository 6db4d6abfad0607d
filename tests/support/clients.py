"""Real installers (pip and uv) run as subprocesses against an index URL.

This machine (and many CI images) configure pip globally (``PIP_FIND_LINKS``, extra
index URLs in ``/etc/pip.conf``): every run here is isolated from that, so an install
can only succeed through the index under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import uv

TIMEOUT = 180


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every pip/uv/proxy setting that could leak in."""
    dropped = ("PIP_", "UV_", "PIPGATE_")
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(dropped) and k.lower() not in proxies
    }
    env.update(extra)
    return env


def pip_install(
    index_url: str, target: Path, *requirements: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``pip install --target`` through ``index_url`` only, without pip's cache."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--retries",
        "0",
        "--timeout",
        "30",
        "--index-url",
        index_url,
        "--target",
        str(target),
        *extra,
        *requirements,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=clean_env(), timeout=TIMEOUT, check=False
    )


def uv_install(
    index_url: str, target: Path, *requirements: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``uv pip install --target`` through ``index_url`` only, without uv's cache."""
    cmd = [
        uv.find_uv_bin(),
        "pip",
        "install",
        "--no-config",
        "--no-cache",
        "--python",
        sys.executable,
        "--index-url",
        index_url,
        "--target",
        str(target),
        *extra,
        *requirements,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=clean_env(UV_PYTHON_DOWNLOADS="never"),
        timeout=TIMEOUT,
        check=False,
    )


def installed(target: Path) -> dict[str, str]:
    """``{normalised project: version}`` of the ``*.dist-info`` dirs in ``target``."""
    found = {}
    for entry in target.glob("*.dist-info"):
        name, _, version = entry.name[: -len(".dist-info")].rpartition("-")
        found[name.lower().replace("_", "-")] = version
    return found
