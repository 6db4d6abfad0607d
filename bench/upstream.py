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

``--project NAME:N`` (repeatable, for ``pages.py``) adds a page-only project of N
files shaped like a PyPI release history (per release an sdist and wheels for several
Pythons and platforms, with hashes, ``core-metadata``, ``requires-python``, sizes and
upload times, one release yanked), so pages cost what real ones do; its file URLs
answer 404. Page bodies are built once per host and served gzipped when the client
accepts it, as PyPI's CDN does, so the upstream is a cheap reference to measure against.

Run: ``python bench/upstream.py --port 8000 --dir /path/to/files [--rate BYTES_PER_S]
[--project midsize:200]``
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
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
#: The wheels of one synthetic release (with its sdist: 10 files, like a project with
#: compiled extensions).
WHEEL_TAGS = (
    "cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64",
    "cp312-cp312-macosx_11_0_arm64",
    "cp312-cp312-win_amd64",
    "cp313-cp313-win_amd64",
    "py3-none-any",
)


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
    #: Page-only projects: name -> number of synthetic files.
    synthetic: dict[str, int]
    #: Page bodies by (project, host, gzipped): the content never changes.
    bodies: dict[tuple[str, str, bool], bytes]


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


def synthetic_files(project: str, count: int, base: str) -> list[dict[str, object]]:
    """``count`` file entries of releases 1.0.0, 1.1.0, ... (newest last, as PyPI lists
    them); the hashes are made up but well-formed, and release 1.1.0 is yanked."""
    files: list[dict[str, object]] = []
    stem = project.replace("-", "_")
    for number in range(count):
        release, slot = divmod(number, len(WHEEL_TAGS) + 1)
        version = f"1.{release}.0"
        if slot == 0:
            filename = f"{stem}-{version}.tar.gz"
        else:
            filename = f"{stem}-{version}-{WHEEL_TAGS[slot - 1]}.whl"
        digest = hashlib.sha256(filename.encode()).hexdigest()
        entry: dict[str, object] = {
            "filename": filename,
            "url": base + filename,
            "hashes": {"sha256": digest},
            "requires-python": ">=3.10",
            "size": 200_000 + int(digest[:5], 16),
            "upload-time": f"2024-{release % 12 + 1:02d}-{slot + 1:02d}T12:00:00.000000Z",
            "yanked": "broken build" if release == 1 else False,
        }
        if slot:
            entry["core-metadata"] = {"sha256": hashlib.sha256(digest.encode()).hexdigest()}
            entry["data-dist-info-metadata"] = entry["core-metadata"]
        files.append(entry)
    return files


def _json(body: object, content_type: str = "application/json") -> web.Response:
    return web.Response(body=json.dumps(body).encode(), content_type=content_type)


async def root(request: web.Request) -> web.Response:
    """The PEP 691 project list."""
    state = request.app[STATE]
    projects = sorted({d.project for d in state.dists.values()} | set(state.synthetic))
    return _json(
        {"meta": {"api-version": "1.1"}, "projects": [{"name": p} for p in projects]}, JSON_TYPE
    )


async def project_page(request: web.Request) -> web.Response:
    """A PEP 691 project page with absolute file URLs (gzipped if the client accepts)."""
    state = request.app[STATE]
    project = request.match_info["project"]
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    key = (project, request.host, gzipped)
    body = state.bodies.get(key)
    if body is None:
        page = page_json(state, project, f"{request.scheme}://{request.host}/files/")
        if page is None:
            raise web.HTTPNotFound(text="no such project\n")
        body = json.dumps(page).encode()
        if gzipped:
            body = gzip.compress(body, mtime=0)
        if len(state.bodies) < 1000:
            state.bodies[key] = body
    response = web.Response(body=body, content_type=JSON_TYPE)
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    return response


def page_json(state: State, project: str, base: str) -> dict[str, object] | None:
    """The PEP 691 page of ``project`` (its files on disk, or synthetic), if it exists."""
    dists = [d for d in state.dists.values() if d.project == project]
    if not dists and project not in state.synthetic:
        return None
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
    files += synthetic_files(project, state.synthetic.get(project, 0), base)
    versions = sorted(
        {str(f["filename"]).split("-")[1].removesuffix(".tar.gz") for f in files},
        key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()),
    )
    return {"meta": {"api-version": "1.1"}, "name": project, "files": files, "versions": versions}


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


def create_app(
    directory: Path, rate: int = 0, synthetic: dict[str, int] | None = None
) -> web.Application:
    """The upstream application for the files in ``directory`` (and page-only projects)."""
    app = web.Application()
    app[STATE] = State(
        dists=load_dists(directory),
        rate=rate,
        gets=Counter(),
        direct_gets=Counter(),
        synthetic={normalize(name): n for name, n in (synthetic or {}).items()},
        bodies={},
    )
    app.router.add_get("/simple/", root)
    app.router.add_get("/simple/{project}/", project_page)
    app.router.add_get("/files/{filename}", file)
    app.router.add_get("/direct/{filename}", file, name="direct")
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_rate", set_rate)
    return app


def parse_project(text: str) -> tuple[str, int]:
    """``NAME:N`` -> (normalised name, N)."""
    name, _, count = text.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:N (N >= 1 files), got {text!r}")
    return normalize(name), int(count)


def main() -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="directory of files to serve")
    parser.add_argument(
        "--rate", type=int, default=0, help="bytes/s per file response (0 = unlimited)"
    )
    parser.add_argument(
        "--project",
        type=parse_project,
        action="append",
        default=[],
        metavar="NAME:N",
        help="a page-only project with N synthetic files (repeatable)",
    )
    args = parser.parse_args()
    app = create_app(args.dir, args.rate, dict(args.project))
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
