"""``/-/setup``: copy-ready client configuration, with this server's own URL filled in.

The URL is the one the reader reached pipgate by (or ``server.public_url``), so what
they copy works from where they stand. Plain ``http`` to a host other than localhost
needs pip's ``trusted-host``; everything is escaped and shown without credentials.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from aiohttp import web

from pipgate.redact import redact_url
from pipgate.web.pages import link_base

_CSS = """
body{margin:0;background:#f5f7fa;color:#1d2330;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header a{color:#cfe0ff}main{max-width:980px;margin:0 auto;padding:20px 32px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:14px 20px;
margin-bottom:18px}h2{font-size:17px;margin:0 0 8px}h3{font-size:14px;margin:12px 0 4px;
color:#5c6678}pre{background:#f0f2f6;border:1px solid #dfe3ea;border-radius:6px;
padding:10px 12px;white-space:pre-wrap;overflow-wrap:anywhere;
font:13px ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
"""


def render_setup(index_url: str) -> str:
    """The page for an index at ``index_url`` (pure; every value escaped)."""
    url = redact_url(index_url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    insecure = parts.scheme == "http" and host not in ("localhost", "127.0.0.1", "::1")
    trusted_conf = f"\ntrusted-host = {host}" if insecure else ""
    trusted_flag = f" --trusted-host {host}" if insecure else ""
    trusted_env = f"\nexport PIP_TRUSTED_HOST={host}" if insecure else ""

    def block(title: str, text: str) -> str:
        return f"<h3>{html.escape(title)}</h3><pre>{html.escape(text)}</pre>"

    sections = [
        (
            "pip",
            block(
                "~/.config/pip/pip.conf (Linux), %APPDATA%\\pip\\pip.ini (Windows)",
                f"[global]\nindex-url = {url}{trusted_conf}",
            )
            + block("or in the environment", f"export PIP_INDEX_URL={url}{trusted_env}")
            + block("or once", f"pip install --index-url {url}{trusted_flag} PACKAGE"),
        ),
        (
            "uv",
            block("~/.config/uv/uv.toml", f'[[index]]\nurl = "{url}"\ndefault = true')
            + block("or in the environment", f"export UV_DEFAULT_INDEX={url}")
            + block(
                "or in a project's pyproject.toml",
                f'[[tool.uv.index]]\nname = "pipgate"\nurl = "{url}"\ndefault = true',
            ),
        ),
        (
            "poetry",
            block("in the project", f"poetry source add --priority=primary pipgate {url}")
            + block(
                "pyproject.toml",
                f'[[tool.poetry.source]]\nname = "pipgate"\nurl = "{url}"\npriority = "primary"',
            ),
        ),
        (
            "pdm",
            block("for every project", f"pdm config pypi.url {url}")
            + block(
                "or a project's pyproject.toml",
                f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{url}"'
                + ("\nverify_ssl = true" if parts.scheme == "https" else ""),
            ),
        ),
        (
            "Check that it works",
            block(
                "downloads pip itself through pipgate, and nothing else",
                f"pip download --no-deps --index-url {url}{trusted_flag} pip -d /tmp/pipgate-check",
            ),
        ),
    ]
    body = "".join(
        f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pipgate: client setup</title><style>{_CSS}</style></head><body>"
        '<header><h1>Point your installers at pipgate</h1><a href="../">status</a></header>'
        f"<main><p>This server's index: <code>{html.escape(url)}</code></p>{body}</main>"
        "</body></html>"
    )


async def setup_page(request: web.Request) -> web.Response:
    """``/-/setup``."""
    base = link_base(request) or f"{request.scheme}://{request.host}/"
    return web.Response(
        body=render_setup(base + "simple/").encode(),
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
    )
