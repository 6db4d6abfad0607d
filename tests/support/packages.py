"""Real, installable distributions built in memory for the hermetic test suite.

Every builder is deterministic (fixed zip/tar timestamps, seeded padding), so the
same inputs always give the same bytes and the same sha256: tests can hard-code
nothing yet still compare hashes across runs and processes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import re
import tarfile
import types
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.utils import canonicalize_name

#: Any fixed instant works; zip cannot store dates before 1980.
_ZIP_DATE = (2024, 1, 2, 3, 4, 5)
_TAR_MTIME = 1704164645  # 2024-01-02T03:04:05Z, same instant as _ZIP_DATE

# The in-tree PEP 517 backend shipped inside every sdist. It is also loaded here (see
# `_backend`) so wheels built by `build_wheel` and wheels built from an sdist by pip/uv
# come from one implementation of the wheel format.
_BACKEND_PY = '''\
"""Offline in-tree PEP 517 backend: PKG-INFO is the metadata, <module>/ the code."""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from email.parser import BytesParser

ZIP_DATE = (2024, 1, 2, 3, 4, 5)


def _record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def wheel_bytes(dist_info, files, stored=()):
    """Zip `files` (archive path -> bytes) plus a correct RECORD into wheel bytes."""
    record_path = dist_info + "/RECORD"
    lines = [f"{p},{_record_hash(d)},{len(d)}" for p, d in files.items()]
    lines.append(f"{record_path},,")
    entries = dict(files)
    entries[record_path] = ("\\n".join(lines) + "\\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in entries.items():
            info = zipfile.ZipInfo(path, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if path in stored else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def wheel_metadata_file(tag="py3-none-any"):
    text = (
        "Wheel-Version: 1.0\\n"
        "Generator: pipgate-tests\\n"
        "Root-Is-Purelib: true\\n"
        f"Tag: {tag}\\n"
    )
    return text.encode()


def _project():
    with open("PKG-INFO", "rb") as f:
        pkg_info = f.read()
    msg = BytesParser().parsebytes(pkg_info)
    escaped = re.sub(r"[-_.]+", "_", msg["Name"]).lower()
    return pkg_info, escaped, msg["Version"]


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    pkg_info, escaped, version = _project()
    dist_info = f"{escaped}-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    with open(os.path.join(metadata_directory, dist_info, "METADATA"), "wb") as f:
        f.write(pkg_info)
    with open(os.path.join(metadata_directory, dist_info, "WHEEL"), "wb") as f:
        f.write(wheel_metadata_file())
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    pkg_info, escaped, version = _project()
    dist_info = f"{escaped}-{version}.dist-info"
    files = {}
    for root, _dirs, names in sorted(os.walk(escaped)):
        for name in sorted(names):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[path.replace(os.sep, "/")] = f.read()
    files[dist_info + "/METADATA"] = pkg_info
    files[dist_info + "/WHEEL"] = wheel_metadata_file()
    filename = f"{escaped}-{version}-py3-none-any.whl"
    with open(os.path.join(wheel_directory, filename), "wb") as f:
        f.write(wheel_bytes(dist_info, files))
    return filename


def build_sdist(sdist_directory, config_settings=None):
    _pkg_info, escaped, version = _project()
    root = f"{escaped}-{version}"
    paths = ["PKG-INFO", "pyproject.toml", "backend.py"]
    for dirpath, _dirs, names in sorted(os.walk(escaped)):
        paths += [os.path.join(dirpath, n) for n in sorted(names)]
    with tarfile.open(os.path.join(sdist_directory, root + ".tar.gz"), "w:gz") as tf:
        for path in paths:
            tf.add(path, arcname=root + "/" + path.replace(os.sep, "/"))
    return root + ".tar.gz"
'''


def _load_backend() -> types.ModuleType:
    """Load `_BACKEND_PY` as a module so this file reuses its wheel writer."""
    module = types.ModuleType("_pipgate_test_backend")
    exec(compile(_BACKEND_PY, "<sdist backend.py>", "exec"), module.__dict__)
    return module


_backend = _load_backend()


@dataclass(frozen=True)
class BuiltDist:
    """One distribution file plus what an index needs to publish it."""

    #: PEP 503 normalised project name (``zope-interface``).
    project: str
    #: The name as written in the metadata (``Zope.Interface``).
    name: str
    version: str
    filename: str
    data: bytes
    #: Lowercase hex sha256 of `data`.
    sha256: str
    #: Wheels: the exact ``*.dist-info/METADATA`` bytes (what PEP 658 serves). sdists: None.
    metadata: bytes | None
    requires_python: str | None = None

    @property
    def size(self) -> int:
        """Length of the file in bytes (PEP 700 ``size``)."""
        return len(self.data)

    @property
    def metadata_sha256(self) -> str | None:
        """Hex sha256 of the PEP 658 ``.metadata`` file, None for sdists."""
        return None if self.metadata is None else hashlib.sha256(self.metadata).hexdigest()

    @property
    def is_wheel(self) -> bool:
        """True for ``.whl`` files (only those get PEP 658 metadata)."""
        return self.filename.endswith(".whl")


def escape_name(name: str) -> str:
    """Wheel/sdist filename form of a project name (binary distribution format spec)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def core_metadata(
    name: str, version: str, *, requires: Iterable[str] = (), requires_python: str | None = None
) -> bytes:
    """Core Metadata 2.1 text: the same bytes become METADATA and PKG-INFO."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {req}" for req in requires]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    return ("\n".join(lines) + "\n").encode()


def _module_source(name: str, version: str) -> bytes:
    return f'"""Test package {name}."""\n\n__version__ = "{version}"\n'.encode()


def _padding(size: int, seed: str) -> bytes:
    """Incompressible but reproducible bytes."""
    return random.Random(seed).randbytes(size)


def _built(
    name: str,
    version: str,
    filename: str,
    data: bytes,
    metadata: bytes | None,
    requires_python: str | None,
) -> BuiltDist:
    return BuiltDist(
        project=canonicalize_name(name),
        name=name,
        version=version,
        filename=filename,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        metadata=metadata,
        requires_python=requires_python,
    )


def build_wheel(
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    requires_python: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    pad_to: int = 0,
    tag: str = "py3-none-any",
) -> BuiltDist:
    """A pure-Python wheel (``py3-none-any`` unless `tag` says otherwise, e.g.
    ``cp311-cp311-win_amd64`` for platform tests) that pip and uv install for real.

    `pad_to` appends a ZIP_STORED data file so the wheel is at least that many bytes,
    for large-download tests.
    """
    escaped = escape_name(name)
    dist_info = f"{escaped}-{version}.dist-info"
    metadata = core_metadata(name, version, requires=requires, requires_python=requires_python)
    files: dict[str, bytes] = {f"{escaped}/__init__.py": _module_source(name, version)}
    files.update(extra_files or {})
    files[f"{dist_info}/METADATA"] = metadata
    files[f"{dist_info}/WHEEL"] = _backend.wheel_metadata_file(tag)
    data: bytes = _backend.wheel_bytes(dist_info, files)
    if pad_to > len(data):
        # Adding N stored bytes grows the zip by at least N, so this reaches pad_to.
        pad_path = f"{escaped}/_padding.bin"
        files[pad_path] = _padding(pad_to - len(data), f"{name}-{version}")
        data = _backend.wheel_bytes(dist_info, files, stored={pad_path})
    filename = f"{escaped}-{version}-{tag}.whl"
    return _built(name, version, filename, data, metadata, requires_python)


def _pyproject(name: str, version: str, requires: list[str], requires_python: str | None) -> bytes:
    deps = ", ".join(f'"{r}"' for r in requires)
    lines = [
        "[build-system]",
        "requires = []",
        'build-backend = "backend"',
        'backend-path = ["."]',
        "",
        "[project]",
        f'name = "{name}"',
        f'version = "{version}"',
        f"dependencies = [{deps}]",
    ]
    if requires_python is not None:
        lines.append(f'requires-python = "{requires_python}"')
    return ("\n".join(lines) + "\n").encode()


def build_sdist(
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    requires_python: str | None = None,
) -> BuiltDist:
    """A ``.tar.gz`` sdist that pip and uv build offline with its in-tree backend."""
    escaped = escape_name(name)
    requires = list(requires)
    root = f"{escaped}-{version}"  # PEP 625: the top directory matches the filename stem
    members = {
        "PKG-INFO": core_metadata(
            name, version, requires=requires, requires_python=requires_python
        ),
        "pyproject.toml": _pyproject(name, version, requires, requires_python),
        "backend.py": _BACKEND_PY.encode(),
        f"{escaped}/__init__.py": _module_source(name, version),
    }
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, content in members.items():
            info = tarfile.TarInfo(f"{root}/{path}")
            info.size = len(content)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(content))
    gz_buf = io.BytesIO()
    # gzip stores a timestamp and the file name in its header; pin both.
    with gzip.GzipFile(filename="", fileobj=gz_buf, mode="wb", mtime=0) as gz:
        gz.write(tar_buf.getvalue())
    return _built(name, version, f"{root}.tar.gz", gz_buf.getvalue(), None, requires_python)


def wheel_metadata(wheel: bytes) -> bytes:
    """The ``*.dist-info/METADATA`` bytes inside a wheel (what PEP 658 must serve)."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        (path,) = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        return zf.read(path)


def record_hash(data: bytes) -> str:
    """RECORD-style hash: ``sha256=`` plus unpadded urlsafe base64 (wheel spec)."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sample_tree() -> list[BuiltDist]:
    """The dependency tree used by client tests.

    ``alpha`` needs beta>=1.0, gamma and delta. Index it with beta 2.0 yanked: installers
    then pick beta 1.0, build gamma from its sdist, and skip delta 4.0 (Requires-Python
    >=4) for delta 3.0, whose specifier needs HTML escaping.
    """
    return [
        build_wheel("alpha", "1.0", requires=["beta>=1.0", "gamma", "delta"]),
        build_wheel("beta", "1.0"),
        build_wheel("beta", "2.0"),
        build_sdist("gamma", "0.5"),
        build_wheel("delta", "3.0", requires_python=">=3.8, <4"),
        build_wheel("delta", "4.0", requires_python=">=4"),
        build_wheel("Zope.Interface", "5.0"),
    ]
