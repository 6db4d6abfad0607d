"""A local PEP 691 upstream for the pipgate benchmark.

Serves every distribution file in ``--dir`` under ``/files/<filename>`` (sendfile, or a
paced stream when a rate is set), a JSON project page per project under
``/simple/<project>/`` whose links point there, the same files under
``/direct/<filename>`` for the benchmark's direct measurements (counted apart, so
``file_gets`` counts only pipgate's fetches), and two control endpoints:

- ``GET /_stats``: ``{"file_gets": {filename: n}, "direct_gets": {filename: n}, "rate": bps}``
- ``POST /_rate?bps=N``: pace each later file response to N bytes/s (0 = unlimited)

Hashes come from ``manifest.json`` in ``--dir`` (``{filename: {"sha256": ...}}``, as
written by ``bench.py``) and are computed for files it does not list.

Run: ``python bench/upstream.py --port 8000 --dir /path/to/files [--rate BYTES_PER_S]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
UPLOAD_TIME = "2024-01-01T00:00:00Z"
CHUNK = 1 << 20
SUFFIXES = (".whl", ".tar.gz", ".zip")


@dataclass(frozen=True)
class Dist:
    """One distribution file on disk."""

    filename: str
    project: str
    version: str
    sha256: str
    size: int
    path: Path


@dataclass
class State:
    """Mutable server state: the files, the per-file GET counter and the pacing rate."""

    dists: dict[str, Dist]
    rate: int
    gets: Counter[str]
    direct_gets: Counter[str]


STATE = web.AppKey("state", State)


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def load_dists(directory: Path) -> dict[str, Dist]:
    """Every distribution file in ``directory``, by filename."""
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    dists: dict[str, Dist] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not path.name.endswith(SUFFIXES):
            continue
        name, version = path.name.split("-")[:2]
        known = manifest.get(path.name, {})
        dists[path.name] = Dist(
            filename=path.name,
            project=normalize(name),
            version=version.removesuffix(".tar.gz").removesuffix(".zip"),
            sha256=known.get("sha256") or sha256_file(path),
            size=path.stat().st_size,
            path=path,
        )
    return dists


def _json(body: object, content_type: str = "application/json") -> web.Response:
    return web.Response(body=json.dumps(body).encode(), content_type=content_type)


async def root(request: web.Request) -> web.Response:
    """The PEP 691 project list."""
    projects = sorted({d.project for d in request.app[STATE].dists.values()})
    return _json(
        {"meta": {"api-version": "1.1"}, "projects": [{"name": p} for p in projects]}, JSON_TYPE
    )


async def project_page(request: web.Request) -> web.Response:
    """A PEP 691 project page with absolute file URLs."""
    project = request.match_info["project"]
    dists = [d for d in request.app[STATE].dists.values() if d.project == project]
    if not dists:
        raise web.HTTPNotFound(text="no such project\n")
    base = f"{request.scheme}://{request.host}/files/"
    files = [
        {
            "filename": d.filename,
            "url": base + d.filename,
            "hashes": {"sha256": d.sha256},
            "size": d.size,
            "upload-time": UPLOAD_TIME,
            "yanked": False,
        }
        for d in dists
    ]
    versions = sorted({d.version for d in dists})
    body = {"meta": {"api-version": "1.1"}, "name": project, "files": files, "versions": versions}
    return _json(body, JSON_TYPE)


async def file(request: web.Request) -> web.StreamResponse:
    """A distribution file: sendfile when unpaced, else a stream paced to the rate."""
    state = request.app[STATE]
    dist = state.dists.get(request.match_info["filename"])
    if dist is None:
        raise web.HTTPNotFound(text="no such file\n")
    if request.method == "GET":
        direct = request.match_info.route.name == "direct"
        (state.direct_gets if direct else state.gets)[dist.filename] += 1
    if state.rate <= 0 or request.method != "GET" or request.http_range.start is not None:
        return web.FileResponse(dist.path, headers={"Content-Type": "application/octet-stream"})
    return await _paced(request, dist, state.rate)


async def _paced(request: web.Request, dist: Dist, rate: int) -> web.StreamResponse:
    """Stream ``dist`` at about ``rate`` bytes/s (about 50 writes a second)."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = dist.size
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    chunk = max(16 * 1024, min(CHUNK, rate // 50))
    start = loop.time()
    sent = 0
    fh = await asyncio.to_thread(dist.path.open, "rb")
    try:
        while block := await asyncio.to_thread(fh.read, chunk):
            await response.write(block)
            sent += len(block)
            ahead = start + sent / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        fh.close()
    await response.write_eof()
    return response


async def stats(request: web.Request) -> web.Response:
    """GETs per file (pipgate's and direct ones) and the current pacing rate."""
    state = request.app[STATE]
    return _json(
        {"file_gets": dict(state.gets), "direct_gets": dict(state.direct_gets), "rate": state.rate}
    )


async def set_rate(request: web.Request) -> web.Response:
    """Set the pacing rate of later file responses (bytes/s per connection, 0 = off)."""
    try:
        rate = int(request.query["bps"])
    except (KeyError, ValueError):
        raise web.HTTPBadRequest(text="expected ?bps=<integer>\n") from None
    request.app[STATE].rate = max(0, rate)
    return _json({"rate": request.app[STATE].rate})


def create_app(directory: Path, rate: int = 0) -> web.Application:
    """The upstream application for the files in ``directory``."""
    app = web.Application()
    app[STATE] = State(
        dists=load_dists(directory), rate=rate, gets=Counter(), direct_gets=Counter()
    )
    app.router.add_get("/simple/", root)
    app.router.add_get("/simple/{project}/", project_page)
    app.router.add_get("/files/{filename}", file)
    app.router.add_get("/direct/{filename}", file, name="direct")
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_rate", set_rate)
    return app


def main() -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="directory of files to serve")
    parser.add_argument(
        "--rate", type=int, default=0, help="bytes/s per file response (0 = unlimited)"
    )
    args = parser.parse_args()
    app = create_app(args.dir, args.rate)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
