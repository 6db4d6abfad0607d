"""Install targets: the wheel tags pip would accept there, markers, the wheel it would pick."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from functools import cache

import pytest
from packaging import tags as packaging_tags
from packaging.markers import Marker, default_environment
from packaging.tags import parse_tag

from pipgate.targets import (
    Target,
    best_wheel,
    choose_files,
    parse_targets,
    this_machine,
)

MANYLINUX = Target("3.11", "manylinux_2_28_x86_64")
MUSL = Target("3.11", "musllinux_1_2_x86_64")
WINDOWS = Target("3.11", "win_amd64")
MAC_ARM = Target("3.11", "macosx_11_0_arm64")


def accepts(target: Target, wheel_tag: str) -> bool:
    """Whether a wheel tagged ``wheel_tag`` (compressed sets allowed) installs on ``target``."""
    return not parse_tag(wheel_tag).isdisjoint(target.tags())


@pytest.mark.parametrize(
    ("target", "wheel_tag", "accepted"),
    [
        # manylinux_2_28: every older glibc down to 2.17 (2.5 on x86_64), legacy aliases too.
        (MANYLINUX, "cp311-cp311-manylinux_2_28_x86_64", True),
        (MANYLINUX, "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", True),
        (MANYLINUX, "cp311-cp311-manylinux2014_x86_64", True),
        (MANYLINUX, "cp311-cp311-manylinux_2_17_x86_64", True),
        (MANYLINUX, "cp311-cp311-manylinux2010_x86_64", True),
        (MANYLINUX, "cp311-cp311-manylinux1_x86_64", True),
        (MANYLINUX, "cp311-cp311-linux_x86_64", True),
        (MANYLINUX, "cp311-cp311-manylinux_2_34_x86_64", False),
        (MANYLINUX, "cp311-cp311-manylinux_2_29_x86_64", False),
        (MANYLINUX, "cp311-cp311-musllinux_1_2_x86_64", False),
        (MANYLINUX, "cp311-cp311-manylinux_2_17_aarch64", False),
        (MANYLINUX, "cp311-cp311-win_amd64", False),
        (Target("3.11", "manylinux_2_28_aarch64"), "cp311-cp311-manylinux2014_aarch64", True),
        (Target("3.11", "manylinux_2_28_aarch64"), "cp311-cp311-manylinux_2_12_aarch64", False),
        (Target("3.11", "manylinux2014_x86_64"), "cp311-cp311-manylinux_2_28_x86_64", False),
        (Target("3.11", "manylinux2014_x86_64"), "cp311-cp311-manylinux1_x86_64", True),
        # musllinux_1_2: musl 1.2, 1.1, 1.0; never a glibc wheel.
        (MUSL, "cp311-cp311-musllinux_1_2_x86_64", True),
        (MUSL, "cp311-cp311-musllinux_1_1_x86_64", True),
        (MUSL, "cp311-cp311-musllinux_1_3_x86_64", False),
        (MUSL, "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", False),
        (MUSL, "cp311-cp311-manylinux1_x86_64", False),
        # Windows: exactly its own platform.
        (WINDOWS, "cp311-cp311-win_amd64", True),
        (WINDOWS, "cp311-cp311-win32", False),
        (WINDOWS, "cp311-cp311-win_arm64", False),
        (Target("3.11", "win32"), "cp311-cp311-win32", True),
        # macOS 11 arm64, as packaging.tags.mac_platforms((11, 0), "arm64") has it: universal2
        # back to 10.4 (its x86_64 half sets the version), never a newer macOS or x86_64.
        (MAC_ARM, "cp311-cp311-macosx_11_0_arm64", True),
        (MAC_ARM, "cp311-cp311-macosx_10_9_universal2", True),
        (MAC_ARM, "cp311-cp311-macosx_11_0_universal2", True),
        (MAC_ARM, "cp311-cp311-macosx_12_0_arm64", False),
        (MAC_ARM, "cp311-cp311-macosx_10_9_x86_64", False),
        (MAC_ARM, "cp311-cp311-macosx_11_0_x86_64", False),
        (Target("3.11", "macosx_14_0_arm64"), "cp311-cp311-macosx_13_0_arm64", True),
        (Target("3.11", "macosx_10_9_x86_64"), "cp311-cp311-macosx_10_6_intel", True),
        (Target("3.11", "macosx_10_9_x86_64"), "cp311-cp311-macosx_10_10_x86_64", False),
        # The interpreter: cp311 takes abi3 from any older 3.x, pure wheels, never cp312.
        (MANYLINUX, "cp37-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64", True),
        (WINDOWS, "cp37-abi3-win_amd64", True),
        (MANYLINUX, "py3-none-any", True),
        (MANYLINUX, "py2.py3-none-any", True),
        (MANYLINUX, "py311-none-any", True),
        (MANYLINUX, "cp311-none-any", True),
        (MANYLINUX, "py3-none-manylinux_2_17_x86_64", True),
        (MANYLINUX, "cp312-cp312-manylinux_2_17_x86_64", False),
        (MANYLINUX, "cp312-abi3-manylinux_2_17_x86_64", False),
        (MANYLINUX, "cp310-cp310-manylinux_2_17_x86_64", False),
        (MANYLINUX, "pp310-pypy310_pp73-manylinux_2_17_x86_64", False),
        (MANYLINUX, "py2-none-any", False),
        (Target("3.10", "win_amd64"), "cp311-abi3-win_amd64", False),
    ],
    ids=lambda value: value.label if isinstance(value, Target) else str(value),
)
def test_target_accepts_what_pip_there_would_accept(
    target: Target, wheel_tag: str, accepted: bool
) -> None:
    assert accepts(target, wheel_tag) is accepted


def test_tags_are_in_pips_priority_order() -> None:
    tags = [str(tag) for tag in MANYLINUX.tags()]
    assert tags[:3] == [
        "cp311-cp311-manylinux_2_28_x86_64",
        "cp311-cp311-manylinux_2_27_x86_64",
        "cp311-cp311-manylinux_2_26_x86_64",
    ]
    order = [
        "cp311-cp311-manylinux_2_17_x86_64",
        "cp311-cp311-manylinux2014_x86_64",
        "cp311-cp311-linux_x86_64",
        "cp311-abi3-manylinux_2_28_x86_64",
        "cp311-none-manylinux_2_28_x86_64",
        "cp310-abi3-manylinux_2_28_x86_64",
        "py311-none-manylinux_2_28_x86_64",
        "cp311-none-any",
        "py311-none-any",
        "py3-none-any",
        "py30-none-any",
    ]
    assert [tags.index(tag) for tag in order] == sorted(tags.index(tag) for tag in order)
    assert tags[-1] == "py30-none-any"


# Not x86_64 macOS: pip 26.3's vendored packaging spells the i386/ppc/x86_64 fat format
# "fat3" (as CPython's _osx_support does), packaging 26.2 still "fat32".
@pytest.mark.parametrize("platform", ["win_amd64", "win32", "win_arm64", "macosx_11_0_arm64"])
def test_windows_and_macos_tags_equal_pips_for_the_same_platform(platform: str) -> None:
    # For these, `pip --platform X --python-version 3.11` expands the platform exactly as a
    # machine of that platform would, so pip's own function is the oracle.
    compatibility_tags = pytest.importorskip("pip._internal.utils.compatibility_tags")
    expected = compatibility_tags.get_supported(version="311", platforms=[platform], impl="cp")
    # pip's vendored Tag is another class: compare the strings.
    assert [str(tag) for tag in Target("3.11", platform).tags()] == [str(t) for t in expected]


def platforms_of(target: Target) -> list[str]:
    """The platform tags in the order the target ranks them."""
    interpreter = target.label.split("-")[0]
    return [t.platform for t in target.tags() if (t.interpreter, t.abi) == (interpreter,) * 2]


def test_manylinux_expansion_equals_packaging_on_a_glibc_2_28_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # packaging's _manylinux.platform_tags only ever describes the running machine: make
    # this one claim glibc 2.28 and compare (linux_<arch> is appended by _linux_platforms).
    manylinux = pytest.importorskip("packaging._manylinux")
    monkeypatch.setattr(manylinux, "_get_glibc_version", lambda: manylinux._GLibCVersion(2, 28))
    monkeypatch.setattr(manylinux, "_have_compatible_abi", lambda executable, archs: True)
    for arch in ("x86_64", "aarch64", "i686", "ppc64le"):
        expected = [*manylinux.platform_tags([arch]), f"linux_{arch}"]
        assert platforms_of(Target("3.11", f"manylinux_2_28_{arch}")) == expected


def test_musllinux_expansion_equals_packaging_on_a_musl_1_2_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    musllinux = pytest.importorskip("packaging._musllinux")
    monkeypatch.setattr(musllinux, "_get_musl_version", lambda _: musllinux._MuslVersion(1, 2))
    expected = [*musllinux.platform_tags(["aarch64"]), "linux_aarch64"]
    assert platforms_of(Target("3.12", "musllinux_1_2_aarch64")) == expected


@pytest.mark.skipif(
    sys.implementation.name != "cpython"
    or bool(sysconfig.get_config_var("Py_DEBUG"))
    or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="packaging's sys_tags adds debug/free-threaded ABIs this target has not",
)
def test_this_machine_accepts_exactly_what_packaging_says_this_interpreter_does() -> None:
    here = this_machine()
    assert here.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert here.tags() == list(packaging_tags.sys_tags())


NUMPY = [
    "numpy-2.2.3-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "numpy-2.2.3-cp310-cp310-win_amd64.whl",
    "numpy-2.2.3-cp311-cp311-macosx_10_9_x86_64.whl",
    "numpy-2.2.3-cp311-cp311-macosx_11_0_arm64.whl",
    "numpy-2.2.3-cp311-cp311-macosx_14_0_arm64.whl",
    "numpy-2.2.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
    "numpy-2.2.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "numpy-2.2.3-cp311-cp311-musllinux_1_2_x86_64.whl",
    "numpy-2.2.3-cp311-cp311-win32.whl",
    "numpy-2.2.3-cp311-cp311-win_amd64.whl",
    "numpy-2.2.3.tar.gz",
]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (MANYLINUX, "numpy-2.2.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        (MUSL, "numpy-2.2.3-cp311-cp311-musllinux_1_2_x86_64.whl"),
        (WINDOWS, "numpy-2.2.3-cp311-cp311-win_amd64.whl"),
        (MAC_ARM, "numpy-2.2.3-cp311-cp311-macosx_11_0_arm64.whl"),
        (Target("3.11", "macosx_14_0_arm64"), "numpy-2.2.3-cp311-cp311-macosx_14_0_arm64.whl"),
        (Target("3.11", "win32"), "numpy-2.2.3-cp311-cp311-win32.whl"),
        (
            Target("3.10", "manylinux_2_28_x86_64"),
            "numpy-2.2.3-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        ),
        (Target("3.11", "manylinux_2_28_ppc64le"), None),
        (Target("3.12", "win_amd64"), None),
    ],
    ids=lambda value: value.label if isinstance(value, Target) else str(value),
)
def test_best_wheel_is_the_one_pip_would_install(target: Target, expected: str | None) -> None:
    assert best_wheel(NUMPY, target) == expected


@pytest.mark.parametrize(
    ("filenames", "expected"),
    [
        # The most specific tag wins over a pure or stable-ABI wheel.
        (
            [
                "pkg-1.0-py3-none-any.whl",
                "pkg-1.0-cp37-abi3-manylinux_2_17_x86_64.whl",
                "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                "pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            ],
            "pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        ),
        (
            ["pkg-1.0-py3-none-any.whl", "pkg-1.0-cp37-abi3-manylinux2014_x86_64.whl"],
            "pkg-1.0-cp37-abi3-manylinux2014_x86_64.whl",
        ),
        # Equal tags: the higher build tag, then (for determinism) the smaller file name.
        (
            ["pkg-1.0-1-py3-none-any.whl", "pkg-1.0-2-py3-none-any.whl"],
            "pkg-1.0-2-py3-none-any.whl",
        ),
        (["pkg-1.0-py3-none-any.whl", "pkg-1.0-1-py3-none-any.whl"], "pkg-1.0-1-py3-none-any.whl"),
        (["Pkg-1.0-py3-none-any.whl", "pkg-1.0-py3-none-any.whl"], "Pkg-1.0-py3-none-any.whl"),
        # Names that are no wheel file name are skipped, as pip skips them.
        (["pkg-1.0-py3-none-any.whl.metadata", "not-a-wheel.whl", "pkg.whl"], None),
        (["pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "pkg-1.0.tar.gz"], None),
        ([], None),
    ],
)
def test_best_wheel_ranks_by_tag_then_build(filenames: list[str], expected: str | None) -> None:
    assert best_wheel(filenames, MANYLINUX) == expected


@pytest.mark.parametrize(
    ("filenames", "expected"),
    [
        (NUMPY, ["numpy-2.2.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]),
        (
            ["pkg-1.0-cp311-cp311-win_amd64.whl", "pkg-1.0.tar.gz"],
            ["pkg-1.0.tar.gz"],
        ),
        (["pkg-1.0.zip", "pkg-1.0.tar.gz"], ["pkg-1.0.tar.gz"]),
        (["pkg-1.0.zip"], ["pkg-1.0.zip"]),
        (["pkg-1.0.tar.bz2", "pkg-1.0.exe", "pkg-1.0-py2.7.egg"], ["pkg-1.0.tar.bz2"]),
        (["pkg-1.0-cp311-cp311-win_amd64.whl"], []),
        ([], []),
    ],
)
def test_choose_files_takes_the_best_wheel_else_the_sdist(
    filenames: list[str], expected: list[str]
) -> None:
    assert choose_files(iter(filenames), MANYLINUX) == expected


@pytest.mark.parametrize(
    ("target", "marker", "expected"),
    [
        (WINDOWS, 'sys_platform == "win32"', True),
        (WINDOWS, 'platform_system == "Windows"', True),  # colorama, in click's metadata
        (WINDOWS, 'os_name == "nt" and platform_machine == "AMD64"', True),
        (MANYLINUX, 'sys_platform == "win32"', False),
        (MANYLINUX, 'platform_system == "Linux" and platform_machine == "x86_64"', True),
        (Target("3.11", "manylinux_2_28_aarch64"), 'platform_machine == "aarch64"', True),
        (MUSL, 'platform_machine == "aarch64"', False),
        (MAC_ARM, 'sys_platform == "darwin" and platform_machine == "arm64"', True),
        (MAC_ARM, 'platform_system == "Darwin" and os_name == "posix"', True),
        (Target("3.10", "win_amd64"), 'python_version < "3.11"', True),  # tomli, exceptiongroup
        (MANYLINUX, 'python_version < "3.11"', False),
        (MANYLINUX, 'python_full_version >= "3.11"', True),
        (MANYLINUX, 'python_full_version <= "3.11.0a6"', False),
        (
            MANYLINUX,
            'sys_platform != "win32" and implementation_name == "cpython"',  # uvloop
            True,
        ),
        (MANYLINUX, 'platform_python_implementation == "PyPy"', False),
    ],
    ids=lambda value: value.label if isinstance(value, Target) else str(value),
)
def test_marker_environment_evaluates_real_markers(
    target: Target, marker: str, expected: bool
) -> None:
    assert Marker(marker).evaluate(target.marker_environment()) is expected


def test_marker_environment_has_every_pep508_variable() -> None:
    # Every key, so evaluation never falls back to *this* machine's value.
    for target in (MANYLINUX, MUSL, WINDOWS, MAC_ARM):
        assert set(target.marker_environment()) == set(default_environment())


@cache
def uv_python_platforms() -> frozenset[str]:
    uv = pytest.importorskip("uv")
    result = subprocess.run(
        [uv.find_uv_bin(), "pip", "compile", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    values = re.search(
        # The help text is wrapped to the terminal: any whitespace may be a line break.
        r"--python-platform <PYTHON_PLATFORM>\s.*?\[possible\s+values:\s*([^\]]*)\]",
        result.stdout,
        re.DOTALL,
    )
    assert values is not None
    return frozenset(value.strip() for value in values[1].split(","))


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("manylinux_2_28_x86_64", "x86_64-manylinux_2_28"),
        ("manylinux_2_28_aarch64", "aarch64-manylinux_2_28"),
        ("manylinux2014_x86_64", "x86_64-manylinux_2_17"),
        ("manylinux_2_17_aarch64", "aarch64-manylinux_2_17"),
        ("manylinux_2_35_x86_64", "x86_64-manylinux_2_35"),
        # Between two uv glibc targets: the lower, so uv never picks a wheel it cannot run.
        ("manylinux_2_30_x86_64", "x86_64-manylinux_2_28"),
        ("manylinux_2_45_x86_64", "x86_64-manylinux_2_40"),
        ("manylinux_2_39_riscv64", "riscv64-unknown-linux"),
        ("musllinux_1_2_x86_64", "x86_64-unknown-linux-musl"),
        ("musllinux_1_2_aarch64", "aarch64-unknown-linux-musl"),
        ("win_amd64", "x86_64-pc-windows-msvc"),
        ("win32", "i686-pc-windows-msvc"),
        ("win_arm64", "aarch64-pc-windows-msvc"),
        ("macosx_11_0_arm64", "aarch64-apple-darwin"),
        ("macosx_10_9_x86_64", "x86_64-apple-darwin"),
    ],
)
def test_uv_platform_is_a_value_uv_lists(platform: str, expected: str) -> None:
    value = Target("3.11", platform).uv_platform()
    assert value == expected
    assert value in uv_python_platforms()


@pytest.mark.parametrize(
    "platform",
    [
        "linux_x86_64",  # any libc: uv's linux targets all assume glibc 2.28
        "musllinux_1_1_x86_64",  # uv's musl targets assume musl 1.2
        "manylinux2010_x86_64",  # uv starts at glibc 2.17
        "manylinux_2_28_ppc64le",
        "manylinux_2_31_riscv64",
    ],
)
def test_uv_platform_refuses_what_uv_cannot_express(platform: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(platform))):
        Target("3.11", platform).uv_platform()


def test_uv_gets_the_macos_version_from_the_environment() -> None:
    # uv's apple-darwin targets assume macOS 13.0 unless MACOSX_DEPLOYMENT_TARGET is set.
    assert MAC_ARM.uv_environment() == {"MACOSX_DEPLOYMENT_TARGET": "11.0"}
    assert Target("3.11", "macosx_10_9_x86_64").uv_environment() == {
        "MACOSX_DEPLOYMENT_TARGET": "10.9"
    }
    assert MANYLINUX.uv_environment() == {}


def test_parse_targets_makes_every_combination_in_order() -> None:
    targets = parse_targets(
        ["3.10", "3.11"],
        ["manylinux_2_28_x86_64", "musllinux_1_2_x86_64", "win_amd64", "macosx_11_0_arm64"],
    )
    assert [target.label for target in targets] == [
        "cp310-manylinux_2_28_x86_64",
        "cp310-musllinux_1_2_x86_64",
        "cp310-win_amd64",
        "cp310-macosx_11_0_arm64",
        "cp311-manylinux_2_28_x86_64",
        "cp311-musllinux_1_2_x86_64",
        "cp311-win_amd64",
        "cp311-macosx_11_0_arm64",
    ]
    assert parse_targets(["3.11", "3.11"], ["win_amd64", "win_amd64"]) == [WINDOWS]


def test_parse_targets_defaults_to_this_machine() -> None:
    here = this_machine()
    assert parse_targets([], []) == [here]
    assert parse_targets(["3.10"], []) == [Target("3.10", here.platform)]
    assert parse_targets([], ["win_amd64"]) == [Target(here.python, "win_amd64")]


@pytest.mark.parametrize(
    ("python", "platform", "message"),
    [
        ("3", "win_amd64", "bad Python version '3': expected MAJOR.MINOR, e.g. 3.11"),
        ("3.11.4", "win_amd64", "bad Python version '3.11.4'"),
        ("py311", "win_amd64", "bad Python version 'py311'"),
        ("2.7", "win_amd64", "only CPython 3 targets"),
        ("3.11", "windows", "unknown platform tag 'windows': expected one like"),
        ("3.11", "manylinux_2_28", "unknown platform tag 'manylinux_2_28'"),
        ("3.11", "manylinux_2_28_amd64", "unknown Linux architecture 'amd64'"),
        ("3.11", "manylinux_3_1_x86_64", "glibc's major version is 2"),
        ("3.11", "manylinux_2_12_aarch64", "aarch64 manylinux wheels start at glibc 2.17"),
        ("3.11", "manylinux2010_aarch64", "manylinux2010 has no aarch64 wheels"),
        ("3.11", "musllinux_2_0_x86_64", "musl's major version is 1"),
        ("3.11", "macosx_11_0_universal2", "macOS targets are arm64 or x86_64"),
        ("3.11", "macosx_10_15_arm64", "arm64 macOS targets start at 11.0"),
        ("3.11", "win_amd64 ", None),  # parse_targets strips; Target itself does not
    ],
)
def test_bad_versions_and_tags_are_clear_value_errors(
    python: str, platform: str, message: str | None
) -> None:
    if message is None:
        assert parse_targets([python], [platform]) == [Target(python, platform.strip())]
        with pytest.raises(ValueError, match="unknown platform tag"):
            Target(python, platform)
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_targets([python], [platform])
