# ruff: noqa: E501 - table rows and captured User-Agents are kept whole
"""Explaining why an install cannot work: client environments from real User-Agents,
compatibility of pages, ``pipgate explain``, the ops view, the messages clients show,
and the setup page."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uv
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from pipgate.compat import State, environment, from_client, summarise_tags, verdicts
from pipgate.policy.rules import Block, Kind
from pipgate.simple.model import DistFile, ProjectPage
from pipgate.useragent import parse_user_agent
from pipgate.web.setup import render_setup
from tests.support.clients import clean_env, pip_install
from tests.support.fake_pypi import FakePyPI
from tests.support.links import file_url
from tests.support.packages import build_wheel
from tests.support.server import PipgateProcess

# --- User-Agents, as the real clients send them -------------------------------------------


@pytest.fixture(scope="module")
def real_user_agents() -> dict[str, str]:
    """The User-Agent real pip and real uv send, captured by a small HTTP server."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        return web.Response(status=404)

    async def capture() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        index = f"http://{host}:{port}/simple/"
        env = clean_env(UV_PYTHON_DOWNLOADS="never")
        commands = [
            [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
             "--retries", "0", "--index-url", index, "-d", "/tmp/pipgate-ua", "nothing-here"],
            [str(uv.find_uv_bin()), "pip", "install", "--no-config", "--no-cache", "--python",
             sys.executable, "--index-url", index, "--target", "/tmp/pipgate-ua", "nothing-here"],
        ]  # fmt: skip
        for cmd in commands:
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            await asyncio.wait_for(proc.wait(), 120)
        await runner.cleanup()

    asyncio.run(capture())
    found = {ua.split("/", 1)[0]: ua for ua in seen if ua}
    assert {"pip", "uv"} <= set(found), seen
    return found


@pytest.mark.clients
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_real_user_agents_say_the_installer_python_libc_and_cpu(
    installer: str, real_user_agents: dict[str, str]
) -> None:
    info = parse_user_agent(real_user_agents[installer])
    assert info.installer == installer and info.installer_version
    assert info.python == platform.python_version()
    assert info.implementation == "CPython"
    assert info.system == "Linux" and info.cpu == platform.machine()
    libc, version = platform.libc_ver()
    assert (info.libc, info.libc_version) == (libc, version)
    env = from_client(info)
    assert env is not None
    major, minor = version.split(".")[:2]
    assert env.target.platform == f"manylinux_{major}_{minor}_{platform.machine()}"
    assert env.python_full == platform.python_version()


@pytest.mark.parametrize(
    "user_agent",
    [
        None,
        "",
        "curl/8.5.0",
        "pip/24.0",
        'pip/24.0 {"installer":',  # truncated
        'pip/24.0 {"installer": {"name": 5}, "python": ["3"]}',  # wrong types
        "uv/0.5 " + "{" * 5000,  # deeply nested garbage
        "poetry/1.8.3 (python 3.12.1; Linux)",
        "pdm/2.22.0 unearth/0.17",
        "\x00\xff" * 100,
        "x" * 100_000,
    ],
)
def test_any_user_agent_parses_to_something_never_an_error(user_agent: str | None) -> None:
    info = parse_user_agent(user_agent)
    assert info.installer in ("pip", "uv", "poetry", "pdm", "other")


@given(st.text(max_size=300))
def test_user_agent_parsing_never_raises(text: str) -> None:
    parse_user_agent(text)
    from_client(parse_user_agent("pip/1 {" + text))


def test_poetry_and_pdm_are_named_with_their_version() -> None:
    poetry = parse_user_agent("poetry/1.8.3 (python 3.12.1; Linux)")
    assert (poetry.installer, poetry.installer_version, poetry.python) == (
        "poetry",
        "1.8.3",
        "3.12.1",
    )
    assert parse_user_agent("pdm/2.22.0").installer_version == "2.22.0"


def test_environments_from_macos_windows_and_musl_agents() -> None:
    mac = 'pip/24 {"implementation":{"name":"CPython"},"python":"3.12.1","cpu":"arm64",' \
        '"system":{"name":"Darwin","release":"23.2.0"},"distro":{"name":"macOS","version":"14.2.1"}}'  # fmt: skip
    win = 'uv/0.5 {"implementation":{"name":"CPython"},"python":"3.13.0","cpu":"AMD64",' \
        '"system":{"name":"Windows","release":"11"}}'  # fmt: skip
    musl = 'pip/24 {"implementation":{"name":"CPython"},"python":"3.11.9","cpu":"x86_64",' \
        '"system":{"name":"Linux"},"distro":{"libc":{"lib":"musl","version":"1.2.4"}}}'  # fmt: skip
    pypy = 'pip/24 {"implementation":{"name":"PyPy"},"python":"3.10.13","cpu":"x86_64",' \
        '"system":{"name":"Linux"},"distro":{"libc":{"lib":"glibc","version":"2.36"}}}'  # fmt: skip
    platforms = [from_client(parse_user_agent(ua)) for ua in (mac, win, musl)]
    assert [e.target.platform for e in platforms if e] == [
        "macosx_14_0_arm64",
        "win_amd64",
        "musllinux_1_2_x86_64",
    ]
    assert from_client(parse_user_agent(pypy)) is None  # no CPython tags to judge by


# --- compatibility -----------------------------------------------------------------------------


def wheel(name: str, version: str, tag: str, **fields: Any) -> DistFile:
    filename = f"{name}-{version}-{tag}.whl"
    return DistFile(filename, f"https://files.example/{filename}", **fields)


def sdist(name: str, version: str, **fields: Any) -> DistFile:
    return DistFile(
        f"{name}-{version}.tar.gz", f"https://files.example/{name}-{version}.tar.gz", **fields
    )


ML = "manylinux_2_17_x86_64.manylinux2014_x86_64"
TF = ProjectPage(
    "tf",
    (
        *(wheel("tf", "2.18.0", f"cp3{m}-cp3{m}-{ML}") for m in range(9, 13)),
        wheel("tf", "2.18.0", "cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64"),
        wheel("tf", "2.18.0", "cp312-cp312-macosx_12_0_arm64"),
        wheel("tf", "2.18.0", "cp312-cp312-win_amd64"),
        wheel("tf", "2.10.0", "cp38-abi3-manylinux_2_28_x86_64"),
        sdist("tf", "2.9.0"),
        wheel("tf", "2.8.0", "py3-none-any", requires_python=">=3.14"),
        wheel("tf", "2.7.0", "py3-none-any", yanked="broken build"),
        wheel("tf", "2.6.0", "py3-none-any"),
    ),
)


@pytest.mark.parametrize(
    ("python", "platform_tag", "version", "state", "needle"),
    [
        ("3.13", "manylinux_2_36_x86_64", "2.18.0", State.NO_WHEEL,
         "no wheel for CPython 3.13 on manylinux_2_36_x86_64 (wheels: cp39–cp312, manylinux "
         "aarch64 and x86_64, macOS arm64, win_amd64)"),
        ("3.12", "manylinux_2_36_x86_64", "2.18.0", State.INSTALLABLE, f"tf-2.18.0-cp312-cp312-{ML}.whl"),
        ("3.12", "musllinux_1_2_x86_64", "2.18.0", State.NO_WHEEL, "manylinux aarch64 and x86_64"),
        ("3.13", "manylinux_2_17_x86_64", "2.10.0", State.NO_WHEEL, "cp38+ (abi3), manylinux x86_64"),
        ("3.13", "manylinux_2_28_x86_64", "2.10.0", State.INSTALLABLE, "tf-2.10.0-cp38-abi3-manylinux_2_28_x86_64.whl"),
        ("3.13", "win_amd64", "2.9.0", State.SDIST_ONLY, "only an sdist, which installs only with a build"),
        ("3.13", "win_amd64", "2.8.0", State.REQUIRES_PYTHON, "requires-python >=3.14 excludes Python 3.13.0"),
        ("3.13", "win_amd64", "2.7.0", State.YANKED, "yanked: broken build (installs only with an exact ==pin)"),
        ("3.13", "macosx_11_0_arm64", "2.6.0", State.INSTALLABLE, "tf-2.6.0-py3-none-any.whl"),
    ],
)  # fmt: skip
def test_each_version_is_installable_or_says_why_not(
    python: str, platform_tag: str, version: str, state: State, needle: str
) -> None:
    found = {v.version: v for v in verdicts(TF, environment(python, platform_tag))}
    verdict = found[version]
    assert verdict.state is state
    assert needle in (verdict.reason or verdict.file or ""), verdict


def test_policy_hidden_and_quarantined_versions_name_their_rule() -> None:
    def block_of(dist: DistFile) -> Block | None:
        if "2.18.0" in dist.filename:
            return Block(Kind.COOLDOWN, "min_age", "tf 2.18.0 is held back until 2026-12-07")
        if "2.10.0" in dist.filename:
            return Block(Kind.QUARANTINE, "quarantine MAL-1", "tf 2.10.0 is quarantined")
        return None

    found = {
        v.version: v
        for v in verdicts(TF, environment("3.12", "manylinux_2_36_x86_64"), block_of=block_of)
    }
    assert found["2.18.0"].state is State.POLICY
    assert found["2.18.0"].reason == "tf 2.18.0 is held back until 2026-12-07 (min_age)"
    assert found["2.10.0"].state is State.QUARANTINED


def test_tags_are_summarised_for_people() -> None:
    names = [f.filename for f in TF.files if f.filename.endswith(".whl")]
    assert summarise_tags(names) == (
        "cp39–cp312, cp38+ (abi3), py3, manylinux aarch64 and x86_64, macOS arm64, "
        "win_amd64, any platform"
    )


# --- pipgate explain ----------------------------------------------------------------------


@pytest.fixture
def tf_index() -> Iterator[FakePyPI]:
    fake = FakePyPI()
    for tag in (f"cp311-cp311-{ML}", f"cp312-cp312-{ML}", "cp312-cp312-win_amd64"):
        fake.add(build_wheel("tf", "2.18.0", tag=tag))
    fake.add(build_wheel("tf", "2.17.0", tag=f"cp311-cp311-{ML}"))
    fake.add(build_wheel("tf", "2.16.0", tag="py3-none-any"))
    fake.start()
    yield fake
    fake.stop()


def pipgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipgate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in clean_env().items() if not k.startswith("PIPGATE_")},
    )


def test_explain_says_what_installs_and_why_the_newer_ones_do_not(
    tf_index: FakePyPI, tmp_path: Path
) -> None:
    common = ("--upstream", tf_index.index_url, "--cache-dir", str(tmp_path / "c"))
    text = pipgate(
        "explain", "TF", "--python", "3.13", "--platform", "manylinux_2_36_x86_64", *common
    )
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "tf for CPython 3.13 on manylinux_2_36_x86_64"
    assert "newest installable: 2.16.0 (tf-2.16.0-py3-none-any.whl)" in text.stdout
    assert any(
        line.strip().startswith("2.18.0: no wheel for CPython 3.13") and "cp311–cp312" in line
        for line in lines
    )
    assert any(line.strip().startswith("2.17.0: no wheel") for line in lines)
    as_json = pipgate(
        "explain", "tf", ">=2.17", "--python", "3.12", "--platform", "win_amd64", "--json", *common
    )
    report = json.loads(as_json.stdout)[0]
    assert report["newest_installable"] == "2.18.0"
    assert report["newest_installable_file"] == "tf-2.18.0-cp312-cp312-win_amd64.whl"
    assert [v["version"] for v in report["versions"]] == ["2.18.0", "2.17.0"]  # the spec
    none = pipgate(
        "explain",
        "tf",
        "==2.18.0",
        "--python",
        "3.13",
        "--platform",
        "musllinux_1_2_x86_64",
        *common,
    )
    assert none.returncode == 1 and "newest installable: none" in none.stdout
    missing = pipgate("explain", "no-such-thing", *common)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_explain_reads_the_environment_from_a_user_agent(
    tf_index: FakePyPI, tmp_path: Path
) -> None:
    ua = 'uv/0.13 {"installer":{"name":"uv","version":"0.13.9"},"python":"3.12.4",' \
        '"implementation":{"name":"CPython"},"system":{"name":"Windows"},"cpu":"AMD64"}'  # fmt: skip
    result = pipgate(
        "explain", "tf", "--from-user-agent", ua, "--json",
        "--upstream", tf_index.index_url, "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    report = json.loads(result.stdout)[0]
    assert report["environment"] == {
        "python": "3.12.4",
        "platform": "win_amd64",
        "installer": "uv",
        "installer_version": "0.13.9",
    }
    assert report["newest_installable_file"] == "tf-2.18.0-cp312-cp312-win_amd64.whl"


# --- what clients show ----------------------------------------------------------------


@pytest.mark.clients
def test_pips_error_output_carries_pipgates_reason_for_an_offline_miss(
    tf_index: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with PipgateProcess(upstream=tf_index.index_url, cache_dir=cache) as gate:
        url = file_url(gate.index_url, "tf", "tf-2.16.0-py3-none-any.whl")  # page cached only
    with PipgateProcess(
        upstream=tf_index.index_url, cache_dir=cache, extra_args=("--offline",)
    ) as gate:
        offline_url = gate.url + "/files/" + url.split("/files/", 1)[1]
        result = pip_install(gate.index_url, tmp_path / "t", offline_url)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert (
            "404 Client Error: Not Found: offline: tf-2.16.0-py3-none-any.whl is not cached here"
            in output
        ), output


def test_the_setup_page_has_copy_ready_configuration_for_every_client() -> None:
    page = render_setup("http://pipgate.corp:3141/simple/")
    for snippet in (
        "[global]\nindex-url = http://pipgate.corp:3141/simple/\ntrusted-host = pipgate.corp",
        "export UV_DEFAULT_INDEX=http://pipgate.corp:3141/simple/",
        "[[index]]\nurl = &quot;http://pipgate.corp:3141/simple/&quot;\ndefault = true",
        "poetry source add --priority=primary pipgate http://pipgate.corp:3141/simple/",
        "pdm config pypi.url http://pipgate.corp:3141/simple/",
        "pip download --no-deps --index-url http://pipgate.corp:3141/simple/ --trusted-host "
        "pipgate.corp pip -d /tmp/pipgate-check",
    ):
        assert snippet in page, snippet
    local = render_setup("http://127.0.0.1:3141/simple/")
    assert "trusted-host" not in local  # pip trusts localhost already
    hostile = render_setup("http://<script>x</script>:1/simple/")
    assert "<script>" not in hostile


async def test_setup_is_served_with_the_servers_own_url(gate: TestClient) -> None:
    resp = await gate.get("/-/setup", headers={"Host": "pipgate.example:8080"})
    assert resp.status == 200
    assert "index-url = http://pipgate.example:8080/simple/" in await resp.text()
    landing = await (await gate.get("/")).text()
    assert 'href="-/setup"' in landing
