"""Find the file URL pipgate's own project page gives for a file (as clients do)."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urljoin

from aiohttp.test_utils import TestClient
from yarl import URL

JSON = "application/vnd.pypi.simple.v1+json"


async def file_path(gate: TestClient, project: str, filename: str) -> str:
    """The path pipgate (in-process) links ``filename`` of ``project`` to."""
    resp = await gate.get(f"/simple/{project}/", headers={"Accept": JSON})
    page = json.loads(await resp.read())
    url = next(f["url"] for f in page["files"] if f["filename"] == filename)
    return gate.make_url(f"/simple/{project}/").join(URL(url)).path


def file_url(index_url: str, project: str, filename: str) -> str:
    """The absolute URL a running pipgate at ``index_url`` links ``filename`` to."""
    page_url = f"{index_url}{project}/"
    request = urllib.request.Request(page_url, headers={"Accept": JSON})
    with urllib.request.urlopen(request, timeout=30) as resp:
        page = json.load(resp)
    href = next(f["url"] for f in page["files"] if f["filename"] == filename)
    return urljoin(page_url, href)
