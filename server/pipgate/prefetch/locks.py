"""Lock files (``pylock.toml``, ``uv.lock``, ``poetry.lock``, ``pdm.lock``) → the files they list.

Every reader turns its format into the same two lists: the index files the lock records
(:class:`LockedFile`, with the hashes it records) and the packages that come from no index
(:class:`SkippedPackage`: VCS checkouts, local source trees, direct archives), which prefetch
cannot warm but should name. Only the keys prefetch needs are read and unknown keys are
ignored, as every one of these formats asks of its readers; a wrong type, a bad hash or a
file entry without a name is a :class:`LockFileError` with a one-line message.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pipgate.redact import redact_url
from pipgate.simple.names import is_valid_name, normalize

LockFormat = Literal["pylock", "uv", "poetry", "pdm"]
#: PEP 751's words for the sources that have no index files: a VCS checkout, a local
#: source tree (editable or not, uv's "virtual" projects too) and a direct archive (a URL
#: or a local file).
SkipKind = Literal["vcs", "directory", "archive"]


@dataclass(frozen=True)
class LockedFile:
    """One index file a lock records; prefetch fetches it by ``project`` + ``filename``."""

    project: str  # PEP 503 normalised
    filename: str  # e.g. "requests-2.32.3-py3-none-any.whl"
    hashes: dict[str, str]  # e.g. {"sha256": "<hex>"}: lowercase algorithm and hex
    url: str | None = None  # when the lock records one
    version: str | None = None  # as the lock records it
    index: str | None = None  # the index the lock says the file came from, when it says


@dataclass(frozen=True)
class SkippedPackage:
    """A locked package with no index files: prefetch can only say it skipped it."""

    project: str
    kind: SkipKind
    version: str | None = None
    location: str | None = None  # the URL (credentials redacted) or path the lock records

    def __str__(self) -> str:
        return f"{self.kind} dependency {self.project}"


@dataclass(frozen=True)
class LockContents:
    """What one lock file lists: index files, and the packages skipped for lack of any."""

    format: LockFormat
    files: list[LockedFile]
    skipped: list[SkippedPackage]


class LockFileError(ValueError):
    """A lock file that cannot be read; the message is one line naming the file."""


def read_lock_file(path: Path) -> list[LockedFile]:
    """The index files ``path`` lists (see :func:`read_lock` for the skipped packages too)."""
    return read_lock(path).files


def read_lock(path: Path) -> LockContents:
    """Read the lock file at ``path``; its format comes from its name, else its content."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise LockFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LockFileError(f"{path}: not UTF-8 text (TOML must be)") from None
    return parse_lock(text, path.name, source=str(path))


def parse_lock(text: str, filename: str, *, source: str | None = None) -> LockContents:
    """Parse lock file ``text`` named ``filename``; errors name ``source`` (or ``filename``)."""
    where = source or filename
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockFileError(f"{where}: not valid TOML: {_one_line(str(exc))}") from None
    try:
        lock_format = _detect(filename, data)
        files, skipped = _READERS[lock_format](data)
        return LockContents(lock_format, _merge_duplicates(files), skipped)
    except _Malformed as exc:
        raise LockFileError(f"{where}: {_one_line(str(exc))}") from None


# PEP 751 "File Name": pylock.toml, or a named lock matching this.
_PYLOCK_NAME = re.compile(r"pylock\.[^.]+\.toml")
_BY_NAME: dict[str, LockFormat] = {"uv.lock": "uv", "poetry.lock": "poetry", "pdm.lock": "pdm"}


def is_lock_filename(filename: str) -> bool:
    """Whether a file name is one of the lock files' own names."""
    name = filename.lower()
    return name == "pylock.toml" or bool(_PYLOCK_NAME.fullmatch(name)) or name in _BY_NAME


def _detect(filename: str, data: dict[str, Any]) -> LockFormat:
    name = filename.lower()
    if name == "pylock.toml" or _PYLOCK_NAME.fullmatch(name):
        return "pylock"
    if name in _BY_NAME:
        return _BY_NAME[name]
    # A renamed copy (`prod.lock`, `locks/api.toml`): recognise each format by the top-level
    # keys its writer always emits.
    if "lock-version" in data and "packages" in data:
        return "pylock"
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        if "lock_version" in metadata or "content_hash" in metadata:
            return "pdm"
        if "lock-version" in metadata or "content-hash" in metadata:
            return "poetry"
    if isinstance(data.get("version"), int) and ("package" in data or "requires-python" in data):
        return "uv"
    raise _Malformed(
        "not a lock file pipgate knows (pylock.toml, pylock.<name>.toml, uv.lock, "
        "poetry.lock or pdm.lock)"
    )


_Result = tuple[list[LockedFile], list[SkippedPackage]]


# --- PEP 751 pylock.toml --------------------------------------------------------------------


def _read_pylock(data: dict[str, Any]) -> _Result:
    lock_version = _required_str(data, "lock-version", "top level")
    # PEP 751 lock-version: "If a tool doesn't support a major version, it MUST raise an error."
    if lock_version.split(".")[0] != "1":
        raise _Malformed(f"unsupported lock-version {lock_version!r} (this reader knows 1.x)")
    files: list[LockedFile] = []
    skipped: list[SkippedPackage] = []
    for number, package in enumerate(_required_tables(data, "packages", "top level"), 1):
        project = _project(package, f"package #{number}")
        where = f"package {project}"
        version = _optional_str(package, "version", where)
        # PEP 751: vcs, directory, archive and sdist/wheels are mutually exclusive.
        sources = [key for key in ("vcs", "directory", "archive") if key in package]
        has_files = "sdist" in package or "wheels" in package
        if len(sources) + has_files > 1:
            present = [*sources, *(["sdist/wheels"] if has_files else [])]
            raise _Malformed(f"{where}: {' and '.join(present)} are mutually exclusive")
        if sources:
            kind = _PYLOCK_SKIP[sources[0]]
            table = _table(package[sources[0]], f"{where}: {sources[0]}")
            location = _optional_str(table, "url", where) or _optional_str(table, "path", where)
            skipped.append(SkippedPackage(project, kind, version, _display(location)))
            continue
        if not has_files:
            raise _Malformed(f"{where}: none of sdist, wheels, archive, directory or vcs")
        index = _optional_str(package, "index", where)
        entries: list[tuple[str, dict[str, Any]]] = []
        if "sdist" in package:
            entries.append((f"{where}: sdist", _table(package["sdist"], f"{where}: sdist")))
        wheels = _optional_tables(package, "wheels", where)
        entries += [(f"{where}: wheels #{n}", wheel) for n, wheel in enumerate(wheels, 1)]
        for entry_where, entry in entries:
            url = _optional_str(entry, "url", entry_where)
            path = _optional_str(entry, "path", entry_where)
            name = _optional_str(entry, "name", entry_where)
            filename = _filename(name, url, path, entry_where, "name, url or path")
            if "hashes" not in entry:
                raise _Malformed(f"{entry_where}: missing hashes")
            hashes = _hash_table(entry["hashes"], f"{entry_where}: hashes")
            files.append(LockedFile(project, filename, hashes, url, version, index))
    return files, skipped


_PYLOCK_SKIP: dict[str, SkipKind] = {"vcs": "vcs", "directory": "directory", "archive": "archive"}


# --- uv.lock --------------------------------------------------------------------------------


def _read_uv(data: dict[str, Any]) -> _Result:
    version = data.get("version")
    if type(version) is not int:
        raise _Malformed("top level: 'version' must be an integer")
    # uv refuses a lock whose version it does not know; the format may have changed.
    if version != 1:
        raise _Malformed(f"unsupported uv.lock version {version} (this reader knows 1)")
    files: list[LockedFile] = []
    skipped: list[SkippedPackage] = []
    # uv < 0.3 called the array `distribution` (uv-resolver's `alias = "distribution"`).
    key = "package" if "package" in data or "distribution" not in data else "distribution"
    for number, package in enumerate(_optional_tables(data, key, "top level"), 1):
        project = _project(package, f"package #{number}")
        where = f"package {project}"
        version_str = _optional_str(package, "version", where)
        source = _table(package.get("source"), f"{where}: source")
        kinds = [kind for kind in _UV_SOURCES if kind in source]
        if len(kinds) != 1:
            raise _Malformed(f"{where}: source must have one of {', '.join(_UV_SOURCES)}")
        location = _required_str(source, kinds[0], f"{where}: source")
        skip_kind = _UV_SOURCES[kinds[0]]
        if skip_kind is not None:
            skipped.append(SkippedPackage(project, skip_kind, version_str, _display(location)))
            continue
        entries: list[tuple[str, dict[str, Any]]] = []
        if "sdist" in package:
            entries.append((f"{where}: sdist", _table(package["sdist"], f"{where}: sdist")))
        wheels = _optional_tables(package, "wheels", where)
        entries += [(f"{where}: wheels #{n}", wheel) for n, wheel in enumerate(wheels, 1)]
        for entry_where, entry in entries:
            url = _optional_str(entry, "url", entry_where)
            path = _optional_str(entry, "path", entry_where)
            # uv-resolver WheelWire: a wheel is named by its url, its path or `filename`.
            name = _optional_str(entry, "filename", entry_where)
            filename = _filename(name, url, path, entry_where, "url, path or filename")
            hashes = _colon_hash(entry["hash"], entry_where) if "hash" in entry else {}
            files.append(LockedFile(project, filename, hashes, url, version_str, location))
    return files, skipped


#: uv-resolver's SourceWire keys, with what each means for prefetch (None: an index).
_UV_SOURCES: dict[str, SkipKind | None] = {
    "registry": None,
    "git": "vcs",
    "url": "archive",
    "path": "archive",
    "directory": "directory",
    "editable": "directory",
    "virtual": "directory",
}


# --- poetry.lock ----------------------------------------------------------------------------


def _read_poetry(data: dict[str, Any]) -> _Result:
    metadata = _table(data.get("metadata", {}), "[metadata]")
    lock_version = _optional_str(metadata, "lock-version", "[metadata]")
    # Poetry's Locker reads lock-version ">=1,<3" and refuses anything else.
    if lock_version is not None and lock_version.split(".")[0] not in {"1", "2"}:
        raise _Malformed(f"unsupported lock-version {lock_version!r} (this reader knows 1.x, 2.x)")
    packages: list[tuple[str, str | None, str | None, dict[str, Any]]] = []
    local_files: dict[str, set[str]] = {}
    skipped: list[SkippedPackage] = []
    for number, package in enumerate(_optional_tables(data, "package", "top level"), 1):
        project = _project(package, f"package #{number}")
        where = f"package {project}"
        version = _optional_str(package, "version", where)
        source = _table(package.get("source", {}), f"{where}: source")
        source_type = _optional_str(source, "type", f"{where}: source")
        url = _optional_str(source, "url", f"{where}: source")
        if source_type in _POETRY_SKIP:
            kind = _POETRY_SKIP[source_type]
            skipped.append(SkippedPackage(project, kind, version, _display(url)))
            if source_type == "file" and url is not None:
                local_files.setdefault(project, set()).add(_last_segment(url))
        elif source_type in {None, "legacy"}:  # "legacy": a custom simple index
            packages.append((project, version, url, package))
        else:
            raise _Malformed(f"{where}: unknown source type {source_type!r}")
    legacy = _poetry_metadata_files(metadata)
    versions_by_project: dict[str, set[str | None]] = {}
    for project, version, _, _ in packages:
        versions_by_project.setdefault(project, set()).add(version)
    files: list[LockedFile] = []
    for project, version, index, package in packages:
        where = f"package {project}"
        # Poetry's Locker, newest generation first: `package.files` (lock 2.x); then
        # `[metadata.hashes]` (before 1.0: hashes without file names, unusable here); then
        # `[metadata.files]` (1.x), one list per name shared by all its versions.
        if "files" in package:
            entries = _optional_tables(package, "files", where)
            entry_version = version
        elif "hashes" in metadata:
            raise _Malformed("[metadata.hashes] (poetry < 1.0) has no file names; re-lock")
        else:
            where = f"[metadata.files] {project}"
            excluded = local_files.get(project, set())
            entries = [e for e in legacy.get(project, []) if e.get("file") not in excluded]
            # A shared list can only be given a version when the name has one.
            entry_version = version if len(versions_by_project[project]) == 1 else None
        for n, entry in enumerate(entries, 1):
            entry_where = f"{where}: files #{n}"
            url = _optional_str(entry, "url", entry_where)
            name = _optional_str(entry, "file", entry_where)
            filename = _filename(name, url, None, entry_where, "file")
            hashes = _colon_hash(entry["hash"], entry_where) if "hash" in entry else {}
            files.append(LockedFile(project, filename, hashes, url, entry_version, index))
    return files, skipped


_POETRY_SKIP: dict[str | None, SkipKind] = {
    "git": "vcs",
    "directory": "directory",
    "file": "archive",
    "url": "archive",
}


def _poetry_metadata_files(metadata: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    table = _table(metadata.get("files", {}), "[metadata.files]")
    result: dict[str, list[dict[str, Any]]] = {}
    for name, entries in table.items():
        if not is_valid_name(name):
            raise _Malformed(f"[metadata.files]: invalid project name {name!r}")
        result.setdefault(normalize(name), []).extend(_tables(entries, f"[metadata.files] {name}"))
    return result


# --- pdm.lock -------------------------------------------------------------------------------


def _read_pdm(data: dict[str, Any]) -> _Result:
    metadata = _table(data.get("metadata", {}), "[metadata]")
    lock_version = _optional_str(metadata, "lock_version", "[metadata]")
    # PDM refuses a lock of another major version (pdmlock.py compatibility()).
    if lock_version is not None and lock_version.split(".")[0] not in {"3", "4"}:
        raise _Malformed(f"unsupported lock_version {lock_version!r} (this reader knows 3.x, 4.x)")
    legacy = _pdm_metadata_files(metadata)
    files: list[LockedFile] = []
    skipped: list[SkippedPackage] = []
    for number, package in enumerate(_optional_tables(data, "package", "top level"), 1):
        project = _project(package, f"package #{number}")
        where = f"package {project}"
        version = _optional_str(package, "version", where)
        # Candidate.as_lockfile_entry: a VCS key (`git = "<url>"`), `path` or `url` marks a
        # package that came from no index.
        vcs = next((key for key in ("git", "hg", "svn", "bzr") if key in package), None)
        if vcs is not None:
            location = _optional_str(package, vcs, where)
            skipped.append(SkippedPackage(project, "vcs", version, _display(location)))
            continue
        if "path" in package:
            path = _required_str(package, "path", where)
            is_archive = not package.get("editable") and path.lower().endswith(_ARCHIVES)
            kind: SkipKind = "archive" if is_archive else "directory"
            skipped.append(SkippedPackage(project, kind, version, path))
            continue
        if "url" in package:
            direct_url = _required_str(package, "url", where)
            skipped.append(SkippedPackage(project, "archive", version, _display(direct_url)))
            continue
        if "files" in package:
            entries = _optional_tables(package, "files", where)
        else:  # lock_version <= 4.2: [metadata.files], keyed "<name> <version>"
            entries = legacy.get((project, version), [])
            where = f"[metadata.files] {project} {version}"
        for n, entry in enumerate(entries, 1):
            entry_where = f"{where}: files #{n}"
            url = _optional_str(entry, "url", entry_where)
            name = _optional_str(entry, "file", entry_where)
            filename = _filename(name, url, None, entry_where, "file or url")
            hashes = _colon_hash(entry["hash"], entry_where) if "hash" in entry else {}
            files.append(LockedFile(project, filename, hashes, url, version))
    return files, skipped


#: Archive suffixes pip accepts (pip's utils/filetypes.py ARCHIVE_EXTENSIONS, plus wheels).
_ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz", ".tar.xz", ".txz")


def _pdm_metadata_files(
    metadata: dict[str, Any],
) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    table = _table(metadata.get("files", {}), "[metadata.files]")
    result: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for key, entries in table.items():
        # Keys are "<name>[<extras>] <version>" (the candidate's identify() and version).
        name, _, version = key.partition(" ")
        name = name.split("[", 1)[0]
        if not is_valid_name(name) or not version:
            raise _Malformed(f"[metadata.files]: key {key!r} is not '<name> <version>'")
        result.setdefault((normalize(name), version), []).extend(
            _tables(entries, f"[metadata.files] {key}")
        )
    return result


_READERS: dict[LockFormat, Callable[[dict[str, Any]], _Result]] = {
    "pylock": _read_pylock,
    "uv": _read_uv,
    "poetry": _read_poetry,
    "pdm": _read_pdm,
}


# --- shared helpers -------------------------------------------------------------------------


class _Malformed(Exception):
    """Raised inside the readers; :func:`parse_lock` adds the file name."""


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), "a date or time")


def _table(value: object, where: str) -> dict[str, Any]:
    if value is None:
        raise _Malformed(f"{where}: missing")
    if not isinstance(value, dict):
        raise _Malformed(f"{where}: expected a table, got {_type_name(value)}")
    return value


def _tables(value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _Malformed(f"{where}: expected an array of tables, got {_type_name(value)}")
    return [_table(item, f"{where} #{n}") for n, item in enumerate(value, 1)]


def _optional_tables(table: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    return _tables(table[key], f"{where}: {key}") if key in table else []


def _required_tables(table: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    if key not in table:
        raise _Malformed(f"{where}: missing {key!r}")
    return _tables(table[key], f"{where}: {key}")


def _optional_str(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise _Malformed(f"{where}: {key!r} must be a string, got {_type_name(value)}")
    return value


def _required_str(table: dict[str, Any], key: str, where: str) -> str:
    value = _optional_str(table, key, where)
    if value is None:
        raise _Malformed(f"{where}: missing {key!r}")
    return value


def _project(package: dict[str, Any], where: str) -> str:
    name = _required_str(package, "name", where)
    if not is_valid_name(name):
        raise _Malformed(f"{where}: invalid project name {name!r}")
    return normalize(name)


def _last_segment(url_or_path: str) -> str:
    if "://" in url_or_path:
        # The URL's file name is percent-encoded ("torch-2.4.0%2Bcpu-…whl" on PyTorch's index).
        return unquote(urlsplit(url_or_path).path.rsplit("/", 1)[-1])
    return re.split(r"[/\\]", url_or_path)[-1]


_UNSAFE_FILENAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def _filename(name: str | None, url: str | None, path: str | None, where: str, keys: str) -> str:
    """The entry's file name: its own, else the last segment of its URL or path."""
    if name is None:
        location = url if url is not None else path
        if location is None:
            raise _Malformed(f"{where}: no {keys}")
        name = _last_segment(location)
    # The name becomes part of a pipgate URL and a cache key: one plain path segment.
    if not name or name in {".", ".."} or _UNSAFE_FILENAME.search(name):
        raise _Malformed(f"{where}: bad file name {name[:100]!r}")
    return name


_ALGORITHM = re.compile(r"[a-z0-9_]+\Z")  # hashlib names: sha256, blake2b, sha3_256
_HEX = re.compile(r"[0-9a-f]+\Z")
_DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}


def _hash_entry(algorithm: str, digest: str, where: str) -> tuple[str, str]:
    algorithm, digest = algorithm.lower(), digest.lower()
    expected = _DIGEST_LENGTHS.get(algorithm)
    valid = _ALGORITHM.match(algorithm) and _HEX.match(digest)
    if not valid or (expected is not None and len(digest) != expected):
        shown = f"{algorithm}:{digest}"
        raise _Malformed(f"{where}: bad hash {shown[:100]!r}")
    return algorithm, digest


def _colon_hash(value: object, where: str) -> dict[str, str]:
    """uv, poetry and pdm write one ``"<algorithm>:<hex>"`` string."""
    if not isinstance(value, str) or ":" not in value:
        shown = value[:100] if isinstance(value, str) else _type_name(value)
        raise _Malformed(f"{where}: hash must be '<algorithm>:<hex>', got {shown!r}")
    algorithm, _, digest = value.partition(":")
    return dict([_hash_entry(algorithm, digest, where)])


def _hash_table(value: object, where: str) -> dict[str, str]:
    """PEP 751 writes a table of ``algorithm = "<hex>"``, with at least one entry."""
    table = _table(value, where)
    if not table:
        raise _Malformed(f"{where}: must contain at least one hash")
    hashes: dict[str, str] = {}
    for algorithm, digest in table.items():
        if not isinstance(digest, str):
            raise _Malformed(f"{where}: {algorithm!r} must be a string")
        key, hexdigest = _hash_entry(algorithm, digest, where)
        hashes[key] = hexdigest
    return hashes


def _merge_duplicates(files: list[LockedFile]) -> list[LockedFile]:
    """One entry per (project, file name), in first-seen order, with the hashes merged.

    pdm repeats a package's files for each set of extras it is locked with; two different
    digests for one file under one algorithm is a broken lock.
    """
    merged: dict[tuple[str, str], LockedFile] = {}
    for locked in files:
        key = (locked.project, locked.filename)
        first = merged.get(key)
        if first is None:
            merged[key] = locked
            continue
        for algorithm, digest in locked.hashes.items():
            if first.hashes.get(algorithm, digest) != digest:
                raise _Malformed(f"conflicting {algorithm} hashes for {locked.filename}")
        if not locked.hashes.keys() <= first.hashes.keys():
            merged[key] = LockedFile(
                first.project,
                first.filename,
                {**first.hashes, **locked.hashes},
                first.url or locked.url,
                first.version or locked.version,
                first.index or locked.index,
            )
    return list(merged.values())


def _display(location: str | None) -> str | None:
    """A recorded URL fit for a log line: git URLs in uv.lock can carry a token."""
    if location is None:
        return None
    try:
        return redact_url(location)
    except ValueError:  # e.g. scp-like "git@host:org/repo" parsed with a non-numeric port
        return "<unparseable url>"


def _one_line(message: str) -> str:
    return " ".join(message.split())
