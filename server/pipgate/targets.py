"""Install targets for ``pipgate prefetch``: a CPython version on a platform.

A :class:`Target` answers what pip running there would do: which wheel tags it accepts and in
which order (:meth:`Target.tags`), how it evaluates environment markers, and which
``uv pip compile --python-platform`` resolves for it.

What a target platform accepts, most specific first (what pip *on* such a machine accepts;
note that pip's own ``--platform manylinux_2_28_x86_64`` expands nothing but ``manylinux2014``
and ``manylinux2010``, see pip's ``compatibility_tags._get_custom_platforms``):

- ``manylinux_2_M_<arch>`` (PEP 600): ``manylinux_2_M`` down to ``manylinux_2_17``
  (``manylinux_2_5`` on x86_64 and i686), each glibc version followed by its legacy alias
  (``manylinux2014`` = 2.17, ``manylinux2010`` = 2.12, ``manylinux1`` = 2.5), then
  ``linux_<arch>``: packaging's ``_manylinux.platform_tags`` run on a glibc 2.M machine,
  which it cannot be asked for directly (it reads the running libc). ``manylinux2014_<arch>``,
  ``manylinux2010_<arch>`` and ``manylinux1_<arch>`` targets are glibc 2.17, 2.12 and 2.5.
- ``musllinux_1_M_<arch>`` (PEP 656): ``musllinux_1_M`` down to ``musllinux_1_0``, then
  ``linux_<arch>`` (packaging's ``_musllinux.platform_tags``); never manylinux.
- ``linux_<arch>``: only itself (a Linux whose libc is unknown).
- ``macosx_X_Y_<arch>`` (arm64, x86_64): exactly ``packaging.tags.mac_platforms((X, Y), arch)``,
  as pip does for ``--platform``: older macOS versions, ``universal2`` (down to 10.4, since the
  x86_64 half of a universal2 wheel sets its version), and for x86_64 also ``intel``,
  ``fat64``, ``fat32`` and ``universal``. Since macOS 11 only ``X_0`` tags are generated.
- ``win_amd64``, ``win32``, ``win_arm64``: only themselves.
"""

from __future__ import annotations

import functools
import re
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms, platform_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion

#: Architectures with manylinux/musllinux wheels (packaging's _manylinux._ALLOWED_ARCHS
#: plus the 32-bit i686 and armv7l).
_LINUX_ARCHS = (
    "x86_64",
    "i686",
    "aarch64",
    "armv7l",
    "ppc64",
    "ppc64le",
    "s390x",
    "riscv64",
    "loongarch64",
)
#: The legacy manylinux names (PEPs 513, 571, 599): their glibc and the architectures each
#: PEP defined.
_LEGACY_MANYLINUX: dict[str, tuple[tuple[int, int], frozenset[str]]] = {
    "manylinux1": ((2, 5), frozenset({"x86_64", "i686"})),
    "manylinux2010": ((2, 12), frozenset({"x86_64", "i686"})),
    "manylinux2014": (
        (2, 17),
        frozenset({"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"}),
    ),
}
_LEGACY_BY_GLIBC = {glibc: name for name, (glibc, _) in _LEGACY_MANYLINUX.items()}
#: Windows platform tags and CPython's ``platform.machine()`` there.
_WINDOWS = {"win_amd64": "AMD64", "win32": "x86", "win_arm64": "ARM64"}
_MACOS_ARCHS = ("arm64", "x86_64")

_EXAMPLES = "manylinux_2_28_x86_64, musllinux_1_2_x86_64, win_amd64, macosx_11_0_arm64"
_PYTHON_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")

System = Literal["linux", "windows", "macos"]


@dataclass(frozen=True)
class _Platform:
    system: System
    machine: str  # CPython's platform.machine() there
    libc: Literal["glibc", "musl"] | None  # for Linux; None for linux_<arch>
    version: tuple[int, int] | None  # the glibc, musl or macOS version
    tags: tuple[str, ...]  # the platform tags accepted, most specific first


@dataclass(frozen=True)
class Target:
    """A CPython version (``"3.11"``) on a platform given by its most specific platform tag."""

    python: str
    platform: str  # "manylinux_2_28_x86_64", "musllinux_1_2_x86_64", "win_amd64", ...

    def __post_init__(self) -> None:
        _python_version(self.python)
        _parse_platform(self.platform)

    @property
    def label(self) -> str:
        """A short name for logs and reports: ``cp311-manylinux_2_28_x86_64``."""
        major, minor = _python_version(self.python)
        return f"cp{major}{minor}-{self.platform}"

    def tags(self) -> list[Tag]:
        """The wheel tags pip on this target accepts, most preferred first."""
        return list(_tags(self))

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values on this target, for ``packaging.markers.Marker.evaluate``."""
        platform = _parse_platform(self.platform)
        # A target names no patch release; x.y.0 satisfies every ">= x.y" marker.
        full_version = f"{self.python}.0"
        return {
            "implementation_name": "cpython",
            "implementation_version": full_version,
            "os_name": "nt" if platform.system == "windows" else "posix",
            "platform_machine": platform.machine,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": {"linux": "Linux", "windows": "Windows", "macos": "Darwin"}[
                platform.system
            ],
            "platform_version": "",
            "python_full_version": full_version,
            "python_version": self.python,
            "sys_platform": {"linux": "linux", "windows": "win32", "macos": "darwin"}[
                platform.system
            ],
        }

    def uv_platform(self) -> str:
        """The ``uv pip compile --python-platform`` value for this target (uv 0.13).

        uv knows glibc 2.17, 2.28 and 2.31-2.40 (x86_64, aarch64; riscv64 at 2.39 only):
        a glibc between two of them maps to the lower one, so uv never picks a wheel the
        target cannot run (at worst an older version than pip there would). uv's musl
        targets are musl 1.2, and its macOS targets take the version from
        :meth:`uv_environment`. Raises ValueError for what uv cannot express without
        picking wheels the target cannot run: musllinux_1_0/1_1, glibc < 2.17, plain
        ``linux_<arch>`` and the architectures uv has no target for.
        """
        platform = _parse_platform(self.platform)
        if platform.system == "windows":
            return {
                "win_amd64": "x86_64-pc-windows-msvc",
                "win32": "i686-pc-windows-msvc",
                "win_arm64": "aarch64-pc-windows-msvc",
            }[self.platform]
        if platform.system == "macos":
            return {"arm64": "aarch64-apple-darwin", "x86_64": "x86_64-apple-darwin"}[
                platform.machine
            ]
        arch = platform.machine
        if platform.libc == "glibc" and platform.version is not None:
            glibc_minor = platform.version[1]
            if arch in {"x86_64", "aarch64"}:
                known = [minor for minor in _UV_GLIBC_MINORS if minor <= glibc_minor]
                if known:
                    return f"{arch}-manylinux_2_{max(known)}"
            elif arch == "riscv64" and glibc_minor >= 39:
                return "riscv64-unknown-linux"  # uv: manylinux_2_39 riscv64
        elif (
            platform.libc == "musl"
            and platform.version is not None
            and platform.version >= (1, 2)
            and arch in {"x86_64", "aarch64"}
        ):
            return f"{arch}-unknown-linux-musl"  # uv: musllinux_1_2
        raise ValueError(
            f"uv has no --python-platform for {self.platform!r} (it knows x86_64 and aarch64 "
            "manylinux_2_17 and newer, musllinux_1_2, riscv64 manylinux_2_39, Windows, macOS)"
        )

    def uv_environment(self) -> dict[str, str]:
        """Environment variables ``uv pip compile`` needs besides ``--python-platform``.

        uv's macOS targets assume macOS 13.0 unless ``MACOSX_DEPLOYMENT_TARGET`` says
        otherwise (uv-configuration ``target_triple.rs``).
        """
        platform = _parse_platform(self.platform)
        if platform.system == "macos" and platform.version is not None:
            major, minor = platform.version
            return {"MACOSX_DEPLOYMENT_TARGET": f"{major}.{minor}"}
        return {}


#: The glibc 2.x minors uv 0.13 has ``<arch>-manylinux_2_<minor>`` targets for.
_UV_GLIBC_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


def this_machine() -> Target:
    """The running interpreter's Python version on this machine's most specific platform."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for tag in platform_tags():
        try:
            return Target(python, tag)
        except ValueError:
            continue
    raise ValueError(
        f"this machine's platform ({sysconfig.get_platform()}) is not one prefetch knows; "
        f"name one, e.g. {_EXAMPLES}"
    )


def parse_targets(pythons: Sequence[str], platforms: Sequence[str]) -> list[Target]:
    """Every combination of ``pythons`` and ``platforms``, without repeats, in order.

    An empty sequence means this machine's Python version or platform.
    """
    if not pythons or not platforms:
        here = this_machine()
        pythons = pythons or [here.python]
        platforms = platforms or [here.platform]
    targets: dict[Target, None] = {}
    for python in pythons:
        for platform in platforms:
            targets[Target(python.strip(), platform.strip())] = None
    return list(targets)


def best_wheel(filenames: Iterable[str], target: Target) -> str | None:
    """The wheel pip would pick for ``target`` among one version's files, or None.

    pip's ``CandidateEvaluator._sort_key``: the most preferred tag wins, then the highest
    build tag; the file name only breaks remaining ties, for determinism. Names that are
    not valid wheel file names are skipped, as pip skips them.
    """
    priority = _priority(target)
    ranked: list[tuple[int, tuple[()] | tuple[int, str], str]] = []
    for filename in filenames:
        if not filename.endswith(".whl"):
            continue
        try:
            _, _, build, tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        ranks = [priority[tag] for tag in tags if tag in priority]
        if ranks:
            ranked.append((min(ranks), build, filename))
    if not ranked:
        return None
    best_rank = min(rank for rank, _, _ in ranked)
    tied = [(build, filename) for rank, build, filename in ranked if rank == best_rank]
    best_build = max(build for build, _ in tied)
    return min(filename for build, filename in tied if build == best_build)


#: sdist suffixes pip accepts (pip's utils/filetypes.py ARCHIVE_EXTENSIONS), in the order
#: chosen when one release has several; ``.tar.gz`` is the standard one (PEP 625).
_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tbz", ".tar.xz", ".txz", ".tar")


def choose_files(filenames: Iterable[str], target: Target) -> list[str]:
    """The files of one version of one project that ``target`` needs: the best wheel, else
    the sdist (if there is one), else nothing."""
    names = list(filenames)
    wheel = best_wheel(names, target)
    if wheel is not None:
        return [wheel]
    sdists = [(rank, name) for name in names if (rank := _sdist_rank(name)) is not None]
    return [min(sdists)[1]] if sdists else []


def _sdist_rank(filename: str) -> int | None:
    lowered = filename.lower()
    return next((n for n, suffix in enumerate(_SDIST_SUFFIXES) if lowered.endswith(suffix)), None)


def _python_version(python: str) -> tuple[int, int]:
    match = _PYTHON_VERSION.fullmatch(python)
    if match is None:
        raise ValueError(f"bad Python version {python!r}: expected MAJOR.MINOR, e.g. 3.11")
    major, minor = int(match[1]), int(match[2])
    if major != 3:
        raise ValueError(f"bad Python version {python!r}: only CPython 3 targets are supported")
    return major, minor


@functools.lru_cache(maxsize=256)
def _parse_platform(tag: str) -> _Platform:
    if tag in _WINDOWS:
        return _Platform("windows", _WINDOWS[tag], None, None, (tag,))
    if match := re.fullmatch(r"manylinux_([0-9]+)_([0-9]+)_(\w+)", tag, re.ASCII):
        arch = _linux_arch(tag, match[3])
        if int(match[1]) != 2:
            raise ValueError(f"platform tag {tag!r}: glibc's major version is 2")
        return _manylinux(tag, (2, int(match[2])), arch)
    if match := re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag, re.ASCII):
        arch = _linux_arch(tag, match[2])
        glibc, archs = _LEGACY_MANYLINUX[match[1]]
        if arch not in archs:
            raise ValueError(f"platform tag {tag!r}: {match[1]} has no {arch} wheels")
        return _manylinux(tag, glibc, arch)
    if match := re.fullmatch(r"musllinux_([0-9]+)_([0-9]+)_(\w+)", tag, re.ASCII):
        arch = _linux_arch(tag, match[3])
        if int(match[1]) != 1:
            raise ValueError(f"platform tag {tag!r}: musl's major version is 1")
        musl_minor = int(match[2])
        # PEP 656 / packaging's _musllinux.platform_tags: same major, every minor down to 0.
        tags = [f"musllinux_1_{minor}_{arch}" for minor in range(musl_minor, -1, -1)]
        return _Platform("linux", arch, "musl", (1, musl_minor), (*tags, f"linux_{arch}"))
    if match := re.fullmatch(r"linux_(\w+)", tag, re.ASCII):
        arch = _linux_arch(tag, match[1])
        return _Platform("linux", arch, None, None, (tag,))
    if match := re.fullmatch(r"macosx_([0-9]+)_([0-9]+)_(\w+)", tag, re.ASCII):
        version, arch = (int(match[1]), int(match[2])), match[3]
        if arch not in _MACOS_ARCHS:
            raise ValueError(f"platform tag {tag!r}: macOS targets are arm64 or x86_64")
        if version < (10, 4) or (arch == "arm64" and version < (11, 0)):
            first = "11.0" if arch == "arm64" else "10.4"
            raise ValueError(f"platform tag {tag!r}: {arch} macOS targets start at {first}")
        return _Platform("macos", arch, None, version, tuple(mac_platforms(version, arch)))
    raise ValueError(f"unknown platform tag {tag!r}: expected one like {_EXAMPLES}")


def _linux_arch(tag: str, arch: str) -> str:
    if arch not in _LINUX_ARCHS:
        known = ", ".join(_LINUX_ARCHS)
        raise ValueError(f"platform tag {tag!r}: unknown Linux architecture {arch!r} ({known})")
    return arch


def _manylinux(tag: str, glibc: tuple[int, int], arch: str) -> _Platform:
    """packaging's ``_manylinux.platform_tags`` for a glibc ``glibc`` machine."""
    # packaging: the oldest glibc is 2.17 (manylinux2014), except 2.5 (manylinux1) on x86.
    oldest = 5 if arch in {"x86_64", "i686"} else 17
    if glibc[1] < oldest:
        raise ValueError(f"platform tag {tag!r}: {arch} manylinux wheels start at glibc 2.{oldest}")
    tags: list[str] = []
    for minor in range(glibc[1], oldest - 1, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if legacy := _LEGACY_BY_GLIBC.get((2, minor)):
            tags.append(f"{legacy}_{arch}")
    return _Platform("linux", arch, "glibc", glibc, (*tags, f"linux_{arch}"))


@functools.lru_cache(maxsize=64)
def _tags(target: Target) -> tuple[Tag, ...]:
    major, minor = _python_version(target.python)
    platforms = _parse_platform(target.platform).tags
    interpreter = f"cp{major}{minor}"
    # The ABI is explicit: with abis=None packaging would read the *running* interpreter's
    # debug and free-threading build flags. Before 3.8 CPython's ABI carried "m" (pymalloc).
    abi = f"{interpreter}m" if minor < 8 else interpreter
    # pip's compatibility_tags.get_supported(): cpython_tags, then compatible_tags; both add
    # the abi3 (cp3x-abi3 down to cp32) and "none" tags the same way pip does.
    return (
        *cpython_tags((major, minor), [abi], platforms),
        *compatible_tags((major, minor), interpreter, platforms),
    )


@functools.lru_cache(maxsize=64)
def _priority(target: Target) -> dict[Tag, int]:
    priority: dict[Tag, int] = {}
    for rank, tag in enumerate(_tags(target)):
        priority.setdefault(tag, rank)
    return priority
