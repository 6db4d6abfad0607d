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

**Generated projects** (for ``load.py``, ``soak.py`` and ``chaos.py``): every name
``gen-<KiB>k-<tag>`` exists, without files on disk. Its page lists ``--gen-versions``
real, installable wheels of about <KiB> KiB each (a payload file, METADATA, WHEEL and
RECORD, stored uncompressed), with sha256, ``core-metadata``, sizes and upload times,
and serves them and their ``.metadata`` files (Range and If-Range included). All wheels
of one size share the same payload, written first, so hashing a never-seen wheel costs
only its last kilobyte: clients and the upstream compute any file's sha256 in
microseconds (:class:`WheelMaker`), so there are as many distinct files as a run needs.

**Dependency trees** (for ``peers.py``): every name ``tree-<tag>-n<node>`` (node 0–29)
is a generated project of 16 KiB wheels whose METADATA (and PEP 658 ``.metadata``)
carries ``Requires-Dist``: installing ``tree-<tag>-n0`` resolves exactly 30
distributions in four rounds (the root needs 5, each of those 4, each of these one of 4
shared leaves). A new tag is a tree no one has seen.

Pages (project pages and the ``/simple/`` list) are PEP 691 JSON, or PEP 503 HTML when
the client's ``Accept`` ranks an HTML type above JSON (pip, uv and pipgate ask for JSON
pages first; pipgate asks for the list as HTML first). ``--list-size N`` adds N made-up
names to the list (PyPI's has about 930k), built in both formats before serving.

**Faults** (for ``chaos.py``): with ``--faults RATE`` (or ``POST /_faults?rate=R``), that
fraction of the responses for generated projects (pages, files, metadata) goes wrong,
seeded by ``--seed``: a connection reset (RST, after part of a file), a truncated body
(FIN before the announced length), corrupted bytes (pages: garbage), a 5xx (503 with
``Retry-After``, 500, 502), a stall of ``--stall`` seconds (before the headers of a
page, in the middle of a file), or a file body running past its size (chunked, no
length). ``GET /_stats`` counts what was injected.

Run: ``python bench/upstream.py --port 8000 --dir /path/to/files [--rate BYTES_PER_S]
[--project midsize:200] [--gen-versions 4] [--faults 0.2 --seed 1 --stall 4]
[--list-size 930000]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import random
import re
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape as html_escape
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


# --- generated projects: any number of distinct, installable wheels ----------------------

#: A generated project's name: its wheels are about ``<KiB>`` KiB.
GEN_NAME = re.compile(r"^gen-([0-9]{1,5})k-[a-z0-9]{1,40}$")
#: The largest generated wheel (KiB): payloads are kept in memory, one per size.
GEN_MAX_KIB = 65536
#: Payloads kept (one per size; the oldest is dropped beyond it).
GEN_PAYLOADS = 16
#: 1980-01-01 00:00 in the zip format's DOS date and time fields.
DOS_DATE, DOS_TIME = (1 << 5) | 1, 0
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


def gen_project(size_kib: int, tag: str) -> str:
    """The generated project whose wheels are about ``size_kib`` KiB."""
    return f"gen-{size_kib}k-{tag}"


def gen_version(number: int) -> str:
    """The version of a generated project's ``number``-th wheel (0-based)."""
    return f"1.{number}.0"


def gen_filename(project: str, version: str) -> str:
    """The wheel filename of a generated project's version."""
    return f"{project.replace('-', '_')}-{version}-py3-none-any.whl"


def gen_size_kib(project: str) -> int | None:
    """The wheel size of a generated project, or None for other names."""
    match = GEN_NAME.match(project)
    if match is None or not 0 < int(match.group(1)) <= GEN_MAX_KIB:
        return None
    return int(match.group(1))


#: A project of a generated dependency tree: ``tree-<tag>-n<node>``, node 0 the root.
TREE_NAME = re.compile(r"^tree-([a-z0-9]{1,40})-n([0-9]{1,2})$")
#: Distributions one install of a tree's root resolves (the root included).
TREE_SIZE = 30
#: The wheel size of tree projects (KiB): small, so page round trips dominate an install.
TREE_KIB = 16


def tree_project(tag: str, node: int = 0) -> str:
    """The name of ``node`` (0 = the root) of the dependency tree ``tag``."""
    return f"tree-{tag}-n{node}"


def tree_node(project: str) -> int | None:
    """The node number of a tree project, or None for other names."""
    match = TREE_NAME.match(project)
    if match is None or int(match.group(2)) >= TREE_SIZE:
        return None
    return int(match.group(2))


def tree_requires(node: int) -> list[int]:
    """The nodes ``node`` requires: the root needs 5, each of those 4 more (20), and each
    of these one of 4 shared leaves, so resolving the root takes 4 rounds of page and
    metadata fetches and finds 1 + 5 + 20 + 4 = 30 distributions."""
    if node == 0:
        return [1, 2, 3, 4, 5]
    if node <= 5:
        return [6 + 4 * (node - 1) + k for k in range(4)]
    if node <= 25:
        return [26 + (node - 6) % 4]
    return []


def wheel_size_kib(project: str) -> int | None:
    """The wheel size of a generated or tree project, or None for other names."""
    if tree_node(project) is not None:
        return TREE_KIB
    return gen_size_kib(project)


def parse_gen_filename(filename: str) -> tuple[str, str] | None:
    """(project, version) of a generated (or tree) wheel's filename, else None."""
    parts = filename.removesuffix(".whl").split("-")
    if not filename.endswith(".whl") or len(parts) != 5 or parts[2:] != ["py3", "none", "any"]:
        return None
    project = normalize(parts[0])
    if wheel_size_kib(project) is None or not re.fullmatch(r"1\.[0-9]{1,6}\.0", parts[1]):
        return None
    return project, parts[1]


def _record_hash(data: bytes) -> str:
    """A RECORD line's hash (PEP 376/427: urlsafe base64 without padding)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class _Payload:
    """The first zip entry every generated wheel of one size shares."""

    name: str
    size: int
    crc: int
    record: str
    #: Its local file header and bytes: the start of every wheel of this size.
    prefix: bytes
    #: sha256 state after ``prefix`` (copied for each wheel).
    digest: hashlib._Hash


@dataclass(frozen=True)
class GenWheel:
    """One generated wheel: a shared prefix and a tail of its own."""

    project: str
    version: str
    filename: str
    prefix: bytes
    tail: bytes
    sha256: str
    metadata: bytes
    metadata_sha256: str

    @property
    def size(self) -> int:
        """Bytes in the whole file."""
        return len(self.prefix) + len(self.tail)

    def chunks(
        self, start: int = 0, end: int | None = None, chunk: int = 256 * 1024
    ) -> Iterator[memoryview]:
        """The bytes ``[start, end)`` in chunks of at most ``chunk`` bytes, uncopied."""
        end = self.size if end is None else end
        pieces = ((memoryview(self.prefix), 0), (memoryview(self.tail), len(self.prefix)))
        for part, offset in pieces:
            lo, hi = max(start - offset, 0), min(end - offset, len(part))
            for at in range(lo, hi, chunk):
                yield part[at : min(at + chunk, hi)]

    def content(self) -> bytes:
        """The whole file (a copy)."""
        return self.prefix + self.tail


class WheelMaker:
    """Builds generated wheels deterministically from (project, version).

    The payload (seeded random bytes of the project's size) is the first entry, so
    every wheel of a size starts with the same bytes and its sha256 continues from a
    saved state: a never-seen wheel costs about a kilobyte of hashing.
    """

    def __init__(self) -> None:
        self._payloads: dict[int, _Payload] = {}

    def _payload(self, size_kib: int) -> _Payload:
        payload = self._payloads.get(size_kib)
        if payload is not None:
            return payload
        payload = self._build_payload(size_kib, f"pipgate_bench_payload/p{size_kib}k.bin")
        if len(self._payloads) >= GEN_PAYLOADS:
            self._payloads.pop(next(iter(self._payloads)))
        self._payloads[size_kib] = payload
        return payload

    @staticmethod
    def _build_payload(size_kib: int, name: str) -> _Payload:
        data = random.Random(f"pipgate-bench-{size_kib}").randbytes(size_kib * 1024)
        crc = zlib.crc32(data)
        header = _local_header(name, crc, len(data))
        prefix = header + data
        return _Payload(
            name=name,
            size=len(data),
            crc=crc,
            record=f"{name},{_record_hash(data)},{len(data)}",
            prefix=prefix,
            digest=hashlib.sha256(prefix),
        )

    def payload_sha256(self, size_kib: int) -> str:
        """The sha256 of the payload file every wheel of ``size_kib`` installs."""
        payload = self._payload(size_kib)
        return hashlib.sha256(payload.prefix[-payload.size :]).hexdigest()

    def payload_name(self, size_kib: int) -> str:
        """The payload's path inside the wheel (and below an install target)."""
        return self._payload(size_kib).name

    def wheel(self, project: str, version: str) -> GenWheel:
        """The wheel of generated (or tree) ``project`` at ``version``."""
        size_kib = wheel_size_kib(project)
        if size_kib is None:
            raise ValueError(f"not a generated project: {project}")
        dist = project.replace("-", "_")
        node = tree_node(project)
        requires = ""
        if node is None:
            payload = self._payload(size_kib)
        else:
            # A payload path of its own: the 30 wheels of a tree install side by side.
            payload = self._build_payload(size_kib, f"{dist}/data.bin")
            tag = project.split("-")[1]
            requires = "".join(
                f"Requires-Dist: {tree_project(tag, n)}>=1.0\n" for n in tree_requires(node)
            )
        info = f"{dist}-{version}.dist-info"
        metadata = (
            "Metadata-Version: 2.1\n"
            f"Name: {project}\n"
            f"Version: {version}\n"
            f"Summary: A generated wheel of the pipgate benchmarks ({size_kib} KiB)\n"
            "Requires-Python: >=3.8\n"
            f"{requires}"
            "\n"
        ).encode()
        wheel = b"Wheel-Version: 1.0\nGenerator: pipgate-bench\nRoot-Is-Purelib: true\n"
        wheel += b"Tag: py3-none-any\n"
        record = "\n".join(
            [
                payload.record,
                f"{info}/METADATA,{_record_hash(metadata)},{len(metadata)}",
                f"{info}/WHEEL,{_record_hash(wheel)},{len(wheel)}",
                f"{info}/RECORD,,",
                "",
            ]
        ).encode()
        entries = [(payload.name, payload.crc, payload.size, 0)]
        tail = bytearray()
        for name, data in (
            (f"{info}/METADATA", metadata),
            (f"{info}/WHEEL", wheel),
            (f"{info}/RECORD", record),
        ):
            crc = zlib.crc32(data)
            entries.append((name, crc, len(data), len(payload.prefix) + len(tail)))
            tail += _local_header(name, crc, len(data)) + data
        directory_at = len(payload.prefix) + len(tail)
        directory = b"".join(_central_header(*entry) for entry in entries)
        tail += directory
        count = len(entries)
        end = (0x06054B50, 0, 0, count, count, len(directory), directory_at, 0)
        tail += struct.pack("<IHHHHIIH", *end)
        digest = payload.digest.copy()
        digest.update(tail)
        return GenWheel(
            project=project,
            version=version,
            filename=gen_filename(project, version),
            prefix=payload.prefix,
            tail=bytes(tail),
            sha256=digest.hexdigest(),
            metadata=metadata,
            metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        )


def _local_header(name: str, crc: int, size: int) -> bytes:
    encoded = name.encode()
    fields = (0x04034B50, 20, 0, 0, DOS_TIME, DOS_DATE, crc, size, size, len(encoded), 0)
    return struct.pack("<IHHHHHIIIHH", *fields) + encoded


def _central_header(name: str, crc: int, size: int, offset: int) -> bytes:
    encoded = name.encode()
    mode = 0o100644 << 16  # a regular file, rw-r--r--
    fields = (0x02014B50, 20, 20, 0, 0, DOS_TIME, DOS_DATE, crc, size, size, len(encoded))
    return struct.pack("<IHHHHHHIIIHHHHHII", *fields, 0, 0, 0, 0, mode, offset) + encoded


# --- faults ----------------------------------------------------------------------------------

#: What can go wrong with a response for a generated project.
FAULT_KINDS = ("reset", "truncate", "corrupt", "status", "stall", "overlong")
FAULT_TARGETS = ("page", "file", "metadata")


@dataclass
class Faults:
    """Random faults in a fraction ``rate`` of the generated projects' responses."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    stall: float = 4.0
    #: Which responses may be spoilt: page, file, metadata.
    targets: tuple[str, ...] = FAULT_TARGETS
    rng: random.Random = field(default_factory=random.Random)
    #: ``<target>:<kind>`` -> responses spoilt so (target: page, file, metadata).
    injected: Counter[str] = field(default_factory=Counter)

    def pick(self, target: str) -> str | None:
        """The fault for this response, if any (counted)."""
        if self.rate <= 0 or target not in self.targets or self.rng.random() >= self.rate:
            return None
        kind = self.rng.choice(self.kinds)
        if target == "page" and kind == "overlong":
            kind = "corrupt"  # a page has no published size to run past
        self.injected[f"{target}:{kind}"] += 1
        return kind


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), unsent bytes dropped."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


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
    #: Page bodies by (project, host, gzipped, html): the content never changes.
    bodies: dict[tuple[str, str, bool, bool], bytes]
    #: Generated projects: their wheels, how many each has, GETs by target, faults.
    maker: WheelMaker = field(default_factory=WheelMaker)
    gen_versions: int = 4
    gen_gets: Counter[str] = field(default_factory=Counter)
    #: Whole-file GETs (no Range) per generated wheel: more than one means a refetch.
    gen_file_gets: Counter[str] = field(default_factory=Counter)
    faults: Faults = field(default_factory=Faults)
    #: Extra names in the project list (``--list-size``), and its bodies by (gzipped, html),
    #: built before the first request so a client's first GET measures the client.
    list_size: int = 0
    list_bodies: dict[tuple[bool, bool], bytes] = field(default_factory=dict)


STATE = web.AppKey("state", State)
HTML_TYPES = ("application/vnd.pypi.simple.v1+html", "text/html")


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


def wants_html(accept: str | None) -> bool:
    """PEP 691 negotiation, reduced to what the benchmarks send: HTML only when the
    client ranks an HTML type above the JSON one (no ``Accept`` = JSON, as before)."""
    quality = {JSON_TYPE: 0.0, "html": 0.0}
    for part in (accept or "").split(","):
        media, *params = (x.strip() for x in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                with contextlib.suppress(ValueError):
                    q = float(param[2:])
        if media in (JSON_TYPE, "*/*"):
            quality[JSON_TYPE] = max(quality[JSON_TYPE], q)
        if media in (*HTML_TYPES, "*/*"):
            quality["html"] = max(quality["html"], q)
    return quality["html"] > quality[JSON_TYPE]


def list_names(state: State) -> list[str]:
    """Every project of the list: files on disk, page-only ones and ``--list-size``
    made-up names (``listed-0000001`` …, about PyPI's average name length)."""
    names = {d.project for d in state.dists.values()} | set(state.synthetic)
    names.update(f"listed-{i:07d}" for i in range(state.list_size))
    return sorted(names)


def list_html(names: list[str]) -> str:
    """The PEP 503 project list."""
    links = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in names)
    return (
        '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.1">'
        f"<title>Simple index</title></head><body>\n{links}</body></html>\n"
    )


def build_list_bodies(state: State) -> None:
    """The project list in both formats, plain and gzipped, once."""
    names = list_names(state)
    page = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    for html, text in ((False, json.dumps(page)), (True, list_html(names))):
        data = text.encode()
        state.list_bodies[(False, html)] = data
        state.list_bodies[(True, html)] = gzip.compress(data, compresslevel=6, mtime=0)


async def root(request: web.Request) -> web.Response:
    """The project list: PEP 691 JSON, or PEP 503 HTML when the client prefers it;
    gzipped when accepted."""
    state = request.app[STATE]
    if not state.list_bodies:
        build_list_bodies(state)
    html = wants_html(request.headers.get("Accept"))
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    response = web.Response(
        body=state.list_bodies[(gzipped, html)], content_type="text/html" if html else JSON_TYPE
    )
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    return response


def page_html(page: dict[str, object]) -> str:
    """A PEP 691 JSON page as PEP 503 HTML (with PEP 592 yanks and PEP 658/714 metadata
    hashes), so both formats list the same files."""
    name = html_escape(str(page["name"]))
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta name="pypi:repository-version" content="1.1">',
        f"<title>Links for {name}</title></head><body><h1>Links for {name}</h1>",
    ]
    files = page["files"]
    assert isinstance(files, list)
    for entry in files:
        attrs = [f'href="{html_escape(entry["url"])}#sha256={entry["hashes"]["sha256"]}"']
        if entry.get("requires-python"):
            attrs.append(f'data-requires-python="{html_escape(entry["requires-python"])}"')
        metadata = entry.get("core-metadata")
        if isinstance(metadata, dict):
            value = f"sha256={metadata['sha256']}"
            attrs += [f'data-dist-info-metadata="{value}"', f'data-core-metadata="{value}"']
        yanked = entry.get("yanked")
        if yanked:
            attrs.append(f'data-yanked="{html_escape(yanked if isinstance(yanked, str) else "")}"')
        lines.append(f"<a {' '.join(attrs)}>{html_escape(entry['filename'])}</a><br />")
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


async def project_page(request: web.Request) -> web.StreamResponse:
    """A PEP 691 project page with absolute file URLs (gzipped if the client accepts)."""
    state = request.app[STATE]
    project = request.match_info["project"]
    if wheel_size_kib(project) is not None:
        return await gen_page(request, state, project)
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    html = wants_html(request.headers.get("Accept"))
    key = (project, request.host, gzipped, html)
    body = state.bodies.get(key)
    if body is None:
        page = page_json(state, project, f"{request.scheme}://{request.host}/files/")
        if page is None:
            raise web.HTTPNotFound(text="no such project\n")
        body = (page_html(page) if html else json.dumps(page)).encode()
        if gzipped:
            body = gzip.compress(body, mtime=0)
        if len(state.bodies) < 1000:
            state.bodies[key] = body
    response = web.Response(body=body, content_type="text/html" if html else JSON_TYPE)
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
    if dist is None and request.match_info.route.name != "direct":
        return await gen_file(request, state, request.match_info["filename"])
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
    """GETs per file (pipgate's and direct ones), the current pacing rate, the GETs of
    generated projects by target and the faults injected."""
    state = request.app[STATE]
    return _json(
        {
            "file_gets": dict(state.gets),
            "direct_gets": dict(state.direct_gets),
            "rate": state.rate,
            "gen_gets": dict(state.gen_gets),
            "gen_refetched": {
                name: n for name, n in state.gen_file_gets.most_common(50) if n > 1
            },
            "faults": {"rate": state.faults.rate, "injected": dict(state.faults.injected)},
        }
    )


async def set_faults(request: web.Request) -> web.Response:
    """``POST /_faults?rate=R[&kinds=reset,stall][&targets=file][&stall=S]``: change the
    fault injection."""
    faults = request.app[STATE].faults
    query = request.query
    try:
        rate = float(query.get("rate", faults.rate))
        kinds = parse_kinds(query["kinds"]) if "kinds" in query else faults.kinds
        targets = parse_targets(query["targets"]) if "targets" in query else faults.targets
        stall = float(query.get("stall", faults.stall))
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    faults.rate, faults.kinds, faults.stall = min(max(rate, 0.0), 1.0), kinds, max(stall, 0.0)
    faults.targets = targets
    return _json(
        {
            "rate": faults.rate,
            "kinds": list(faults.kinds),
            "targets": list(faults.targets),
            "stall": faults.stall,
        }
    )


# --- generated projects: pages and files, with faults ---------------------------------------


def gen_page_json(state: State, project: str, base: str) -> dict[str, object]:
    """The PEP 691 page of a generated project: ``gen_versions`` wheels with metadata."""
    files: list[dict[str, object]] = []
    for number in range(state.gen_versions):
        wheel = state.maker.wheel(project, gen_version(number))
        files.append(
            {
                "filename": wheel.filename,
                "url": base + wheel.filename,
                "hashes": {"sha256": wheel.sha256},
                "requires-python": ">=3.8",
                "size": wheel.size,
                "upload-time": UPLOAD_TIME,
                "yanked": False,
                "core-metadata": {"sha256": wheel.metadata_sha256},
                "data-dist-info-metadata": {"sha256": wheel.metadata_sha256},
            }
        )
    versions = [gen_version(n) for n in range(state.gen_versions)]
    return {"meta": {"api-version": "1.1"}, "name": project, "files": files, "versions": versions}


def _error_status(faults: Faults) -> web.Response:
    """A 5xx as an overloaded or broken upstream sends it."""
    status = faults.rng.choice((500, 502, 503))
    headers = {"Retry-After": "1"} if status == 503 else {}
    return web.Response(status=status, text=f"injected {status}\n", headers=headers)


async def gen_page(request: web.Request, state: State, project: str) -> web.StreamResponse:
    """A generated project's page (gzipped if the client accepts), maybe spoilt."""
    state.gen_gets["page"] += 1
    fault = state.faults.pick("page")
    if fault == "reset":
        _reset(request)
        return web.Response(status=599)  # never sent: the connection is gone
    if fault == "status":
        return _error_status(state.faults)
    if fault == "stall":
        await asyncio.sleep(state.faults.stall)
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    html = wants_html(request.headers.get("Accept"))
    page = gen_page_json(state, project, f"{request.scheme}://{request.host}/files/")
    body = page_html(page) if html else json.dumps(page)
    data = gzip.compress(body.encode(), compresslevel=1, mtime=0) if gzipped else body.encode()
    if fault == "corrupt":
        # Garbage, not a flipped bit: pages carry no checksum, so a page that still
        # parses with a changed hash is indistinguishable from a new release.
        data = state.faults.rng.randbytes(len(data))
    response = web.StreamResponse(headers={"Content-Type": "text/html" if html else JSON_TYPE})
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    response.content_length = len(data)
    await response.prepare(request)
    if fault == "truncate":
        await response.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write(data)
    await response.write_eof()
    return response


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range, None for none/unsupported/unsatisfiable
    (then the whole file is sent, as RFC 9110 allows)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header.removeprefix("bytes=").strip().partition("-")
    try:
        if not first:
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), (min(int(last) + 1, size) if last else size)
    except ValueError:
        return None
    return (start, end) if 0 <= start < end <= size else None


async def gen_file(request: web.Request, state: State, filename: str) -> web.StreamResponse:
    """A generated wheel or its ``.metadata``: Range and If-Range, maybe spoilt."""
    is_metadata = filename.endswith(".metadata")
    parsed = parse_gen_filename(filename.removesuffix(".metadata"))
    if parsed is None or int(parsed[1].split(".")[1]) >= state.gen_versions:
        raise web.HTTPNotFound(text="no such file\n")
    wheel = state.maker.wheel(*parsed)
    target = "metadata" if is_metadata else "file"
    fault = None
    if request.method == "GET":
        state.gen_gets[target] += 1
        if not is_metadata and "Range" not in request.headers:
            state.gen_file_gets[filename] += 1
            if state.gen_file_gets[filename] > 1:
                state.gen_gets["refetch"] += 1
        fault = state.faults.pick(target)
    if fault == "status":
        return _error_status(state.faults)
    size = len(wheel.metadata) if is_metadata else wheel.size
    etag = f'"{wheel.metadata_sha256 if is_metadata else wheel.sha256}"'
    headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": LAST_MODIFIED,
    }
    start, end, status = 0, size, 200
    if_range = request.headers.get("If-Range")
    if if_range is None or if_range in (etag, LAST_MODIFIED):
        selected = _parse_range(request.headers.get("Range"), size)
        if selected is not None:
            (start, end), status = selected, 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    if fault != "overlong":
        response.content_length = end - start
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    length = end - start
    rng = state.faults.rng
    cut = rng.randrange(length) if fault in ("reset", "truncate", "stall") and length else None
    flips: set[int] = set()
    if fault == "corrupt" and length:
        flips = {rng.randrange(length) for _ in range(rng.randint(1, 3))}
    if is_metadata:
        parts: Iterator[memoryview] = iter([memoryview(wheel.metadata)[start:end]])
    else:
        parts = wheel.chunks(start, end)
    sent = 0
    for part in parts:
        block: bytes | bytearray | memoryview = part
        if flips:
            spoilt = bytearray(part)
            for at in flips:
                if sent <= at < sent + len(part):
                    spoilt[at - sent] ^= 0xFF
            block = spoilt
        if cut is not None and sent <= cut < sent + len(part):
            await response.write(block[: cut - sent])
            if fault == "reset":
                _reset(request)
                return response
            if fault == "truncate":
                if request.transport is not None:
                    request.transport.close()  # FIN before the announced length
                return response
            await asyncio.sleep(state.faults.stall)
            if request.transport is None or request.transport.is_closing():
                return response
            block = block[cut - sent :]
        await response.write(block)
        sent += len(part)
    if fault == "overlong":
        await response.write(rng.randbytes(64 * 1024))  # past the published size
    await response.write_eof()
    return response


async def set_rate(request: web.Request) -> web.Response:
    """Set the pacing rate of later file responses (bytes/s per connection, 0 = off)."""
    try:
        rate = int(request.query["bps"])
    except (KeyError, ValueError):
        raise web.HTTPBadRequest(text="expected ?bps=<integer>\n") from None
    request.app[STATE].rate = max(0, rate)
    return _json({"rate": request.app[STATE].rate})


def create_app(
    directory: Path,
    rate: int = 0,
    synthetic: dict[str, int] | None = None,
    *,
    gen_versions: int = 4,
    faults: Faults | None = None,
    list_size: int = 0,
) -> web.Application:
    """The upstream application for the files in ``directory`` (and page-only projects,
    and generated projects)."""
    app = web.Application()
    app[STATE] = State(
        dists=load_dists(directory),
        rate=rate,
        gets=Counter(),
        direct_gets=Counter(),
        synthetic={normalize(name): n for name, n in (synthetic or {}).items()},
        bodies={},
        gen_versions=gen_versions,
        faults=faults or Faults(),
        list_size=list_size,
    )
    if list_size:
        build_list_bodies(app[STATE])
    app.router.add_get("/simple/", root)
    app.router.add_get("/simple/{project}/", project_page)
    app.router.add_get("/files/{filename}", file)
    app.router.add_get("/direct/{filename}", file, name="direct")
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_rate", set_rate)
    app.router.add_post("/_faults", set_faults)
    return app


def parse_project(text: str) -> tuple[str, int]:
    """``NAME:N`` -> (normalised name, N)."""
    name, _, count = text.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:N (N >= 1 files), got {text!r}")
    return normalize(name), int(count)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``reset,stall`` -> the fault kinds (all of them: ``all``)."""
    if text.strip() == "all":
        return FAULT_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"fault kinds are {', '.join(FAULT_KINDS)}; got {text!r}")
    return kinds


def parse_targets(text: str) -> tuple[str, ...]:
    """``file,metadata`` -> the responses faults may spoil."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets or any(t not in FAULT_TARGETS for t in targets):
        raise argparse.ArgumentTypeError(f"fault targets are {', '.join(FAULT_TARGETS)}")
    return targets


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
    parser.add_argument(
        "--gen-versions", type=int, default=4, help="wheels per generated project (default 4)"
    )
    parser.add_argument(
        "--faults", type=float, default=0.0, help="fraction of generated responses spoilt"
    )
    parser.add_argument(
        "--fault-kinds", type=parse_kinds, default=FAULT_KINDS, help="comma-separated, or all"
    )
    parser.add_argument(
        "--fault-targets",
        type=parse_targets,
        default=FAULT_TARGETS,
        help="which responses faults may spoil (page,file,metadata)",
    )
    parser.add_argument("--stall", type=float, default=4.0, help="seconds a stall lasts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults")
    parser.add_argument(
        "--list-size",
        type=int,
        default=0,
        help="made-up names added to the /simple/ project list (PyPI: about 930000)",
    )
    args = parser.parse_args()
    faults = Faults(
        rate=args.faults,
        kinds=args.fault_kinds,
        stall=args.stall,
        targets=args.fault_targets,
        rng=random.Random(args.seed),
    )
    app = create_app(
        args.dir,
        args.rate,
        dict(args.project),
        gen_versions=args.gen_versions,
        faults=faults,
        list_size=args.list_size,
    )
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
