"""Air-gapped and offline networks end to end: prefetch for several targets, offline
mode, export and import, and metadata derived from cached wheels (a fake upstream with
platform wheels; real pip and uv; pipgate as real processes)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uv

from tests.support.clients import clean_env, installed, pip_install, uv_install
from tests.support.fake_pypi import FakePyPI
from tests.support.links import JSON
from tests.support.packages import BuiltDist, build_sdist, build_wheel
from tests.support.server import PipgateProcess

pytestmark = pytest.mark.clients

MANYLINUX = "manylinux_2_17_x86_64.manylinux2014_x86_64"
APP = build_wheel(
    "app", "1.0", requires=["plat>=1.0", 'winonly; sys_platform == "win32"', "onlysdist"]
)
PLAT = {
    "cp311-linux": build_wheel("plat", "1.0", tag=f"cp311-cp311-{MANYLINUX}"),
    "cp310-linux": build_wheel("plat", "1.0", tag=f"cp310-cp310-{MANYLINUX}"),
    "cp311-musl": build_wheel("plat", "1.0", tag="cp311-cp311-musllinux_1_2_x86_64"),
    "cp311-win": build_wheel("plat", "1.0", tag="cp311-cp311-win_amd64"),
    "cp311-mac": build_wheel("plat", "1.0", tag="cp311-cp311-macosx_11_0_arm64"),
    "sdist": build_sdist("plat", "1.0"),
}
WINONLY = build_wheel("winonly", "1.0")
ONLYSDIST = build_sdist("onlysdist", "1.0")
OLDPY = build_wheel("oldpy-helper", "1.0")
REQUIREMENTS = 'app>=0.5\noldpy-helper ; python_version < "3.11"\n'


@pytest.fixture
def index() -> Iterator[FakePyPI]:
    """Platform wheels of several kinds; no PEP 658 files (pipgate derives them)."""
    fake = FakePyPI()
    for dist in (APP, *PLAT.values(), WINONLY, ONLYSDIST, OLDPY):
        fake.add(dist, metadata=False)
    fake.start()
    yield fake
    fake.stop()


def pipgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("PIPGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "pipgate", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
        cwd=cwd,
    )


def fetched(fake: FakePyPI) -> set[str]:
    """Filenames the upstream served file bodies of (GET, not metadata)."""
    return {
        path.rsplit("/", 1)[1]
        for method, path, _ in fake.requests
        if method == "GET" and path.startswith("/packages/") and not path.endswith(".metadata")
    }


def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text(REQUIREMENTS)
    return path


def test_prefetch_fetches_exactly_what_each_target_installs_and_resumes(
    index: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reqs = requirements(tmp_path)
    args = (
        "prefetch", "-r", str(reqs), "--upstream", index.index_url, "--cache-dir", str(cache),
        "--python", "3.10", "3.11", "--platform", "manylinux_2_28_x86_64", "win_amd64",
    )  # fmt: skip
    first = pipgate(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "fetched" in first.stdout and "already cached" in first.stdout
    expected = {
        APP.filename,
        PLAT["cp311-linux"].filename,  # 3.11 on Linux
        PLAT["cp310-linux"].filename,  # 3.10 on Linux
        PLAT["cp311-win"].filename,  # 3.11 on Windows
        PLAT["sdist"].filename,  # 3.10 on Windows: no wheel, so the sdist
        WINONLY.filename,  # only Windows needs it (a marker)
        ONLYSDIST.filename,  # no wheel at all
        OLDPY.filename,  # only 3.10 needs it (a marker)
    }
    assert fetched(index) == expected
    # Every file went through the verified store.
    blobs = {p.name for p in (cache / "blobs").rglob("*") if p.is_file()}
    for dist in (APP, *PLAT.values(), WINONLY, ONLYSDIST, OLDPY):
        assert (dist.sha256 in blobs) == (dist.filename in expected), dist.filename
    # Running it again fetches nothing.
    index.clear_requests()
    again = pipgate(*args, "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["fetched"] == 0 and report["cached"] == len(expected)
    assert fetched(index) == set()


def test_prefetch_of_a_missing_project_fails_naming_it(index: FakePyPI, tmp_path: Path) -> None:
    result = pipgate(
        "prefetch", "no-such-project>=1", "--upstream", index.index_url,
        "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "unresolved" in result.stdout and "no-such-project" in result.stdout


def uv_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(uv.find_uv_bin()), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=cwd,
        env=clean_env(UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1"),
    )


def test_prefetch_from_lock_files_made_by_real_uv(index: FakePyPI, tmp_path: Path) -> None:
    from pipgate.prefetch.locks import read_lock_file

    project = tmp_path / "demo"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1"\nrequires-python = ">=3.10"\n'
        'dependencies = ["app"]\n'
    )
    locked = uv_run(
        "lock", "--default-index", index.index_url, "--python", sys.executable, cwd=project
    )
    assert locked.returncode == 0, locked.stderr
    (tmp_path / "req.in").write_text("app\n")
    compiled = uv_run(
        "pip", "compile", "req.in", "--format", "pylock.toml", "-o", "pylock.toml",
        "--index-url", index.index_url, "--python", sys.executable, cwd=tmp_path,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    for lock in (project / "uv.lock", tmp_path / "pylock.toml"):
        index.clear_requests()
        cache = tmp_path / f"cache-{lock.name}"
        listed = {f.filename for f in read_lock_file(lock)}
        assert APP.filename in listed
        result = pipgate(
            "prefetch", str(lock), "--upstream", index.index_url, "--cache-dir", str(cache)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert fetched(index) == listed, lock.name


def test_a_lock_file_whose_hash_differs_from_the_index_fails_that_file(
    index: FakePyPI, tmp_path: Path
) -> None:
    lock = tmp_path / "pylock.toml"
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "test"\n'
        '[[packages]]\nname = "app"\nversion = "1.0"\n'
        f'[[packages.wheels]]\nname = "{APP.filename}"\nurl = "{index.file_url(APP)}"\n'
        f'hashes = {{sha256 = "{"0" * 64}"}}\n'
    )
    result = pipgate(
        "prefetch", str(lock), "--upstream", index.index_url, "--cache-dir", str(tmp_path / "c")
    )
    assert result.returncode == 1
    assert f"failed: {APP.filename}: hash_mismatch" in result.stdout
    assert fetched(index) == set()


# --- offline ----------------------------------------------------------------------------


def prefetch_for_this_machine(index: FakePyPI, cache: Path, reqs: Path) -> None:
    result = pipgate(
        "prefetch", "-r", str(reqs), "--upstream", index.index_url, "--cache-dir", str(cache)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def status_and_body(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_offline_installs_what_was_prefetched_and_nothing_reaches_upstream(
    installer: str, index: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reqs = requirements(tmp_path)
    prefetch_for_this_machine(index, cache, reqs)
    index.clear_requests()
    install = pip_install if installer == "pip" else uv_install
    with PipgateProcess(
        upstream=index.index_url, cache_dir=cache, extra_args=("--offline",)
    ) as gate:
        result = install(gate.index_url, tmp_path / "target", "-r", str(reqs))
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed(tmp_path / "target") == {"app": "1.0", "plat": "1.0", "onlysdist": "1.0"}
        # A project never cached (only a 3.10 target needs it) is an offline 404.
        status, body = status_and_body(gate.index_url + "oldpy-helper/")
        assert status == 404 and "offline: project oldpy-helper is not cached here" in body
        missing = install(gate.index_url, tmp_path / "other", "oldpy-helper")
        assert missing.returncode != 0
        ready = json.loads(status_and_body(gate.url + "/readyz")[1])
        assert ready["ready"] is True and ready["offline"] is True
        assert "Offline" in status_and_body(gate.url + "/")[1]
    assert index.requests == []  # not one request, pages and files alike


# --- export and import ---------------------------------------------------------------


def test_export_installs_from_file_urls_and_imports_into_another_pipgate(
    index: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reqs = requirements(tmp_path)
    prefetch_for_this_machine(index, cache, reqs)
    export = tmp_path / "export"
    done = pipgate("export", str(export), "--cache-dir", str(cache), "--upstream", index.index_url)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((export / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (export / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    file_index = (export / "simple").as_uri() + "/"
    for name, install in (("pip", pip_install), ("uv", uv_install)):
        result = install(file_index, tmp_path / f"from-file-{name}", "app")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed(tmp_path / f"from-file-{name}")["app"] == "1.0"

    # Across the air gap: a second pipgate, its own cache, no upstream at all.
    other = tmp_path / "other-cache"
    imported = pipgate("import", str(export), "--cache-dir", str(other), "--json")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert json.loads(imported.stdout)["refused"] == []
    again = json.loads(pipgate("import", str(export), "--cache-dir", str(other), "--json").stdout)
    assert again["files"] == 0 and again["pages"] == 0  # idempotent
    with PipgateProcess(upstream=None, cache_dir=other, extra_args=("--offline",)) as gate:
        result = pip_install(gate.index_url, tmp_path / "imported", "-r", str(reqs))
        assert result.returncode == 0, result.stdout + result.stderr

    # The export as an upstream of its own.
    with PipgateProcess(upstream=file_index, cache_dir=tmp_path / "via-file") as gate:
        result = uv_install(gate.index_url, tmp_path / "via-file-target", "app")
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_tampered_export_file_is_refused_and_incremental_exports_carry_only_news(
    index: FakePyPI, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    prefetch_for_this_machine(index, cache, requirements(tmp_path))
    export = tmp_path / "export"
    same = ("--cache-dir", str(cache), "--upstream", index.index_url)  # serve's config
    assert pipgate("export", str(export), *same).returncode == 0
    manifest = json.loads((export / "manifest.json").read_text())
    victim = next(
        e for e in manifest["files"] if e["filename"] == APP.filename and e["kind"] == "file"
    )
    wheel = export / victim["path"]
    original = wheel.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    result = pipgate("import", str(export), "--cache-dir", str(tmp_path / "c2"), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert any(APP.filename in line and "hash_mismatch" in line for line in report["refused"])
    assert report["files"] == len(manifest["files"]) - 1  # the rest is imported

    newer = build_wheel("app", "1.1", requires=["plat>=1.0", "onlysdist"])
    index.add(newer, metadata=False)
    (tmp_path / "new.txt").write_text("app==1.1\n")
    prefetch_for_this_machine(index, cache, tmp_path / "new.txt")
    news = tmp_path / "news.tar"
    done = pipgate(
        "export", str(news), "--archive", "--since", str(export / "manifest.json"), *same
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(news) as tar:
        carried = {n.rsplit("/", 1)[1] for n in tar.getnames() if n.startswith("files/")}
    assert carried == {newer.filename, newer.filename + ".metadata"}
    # Imported where the first export already is, the incremental one is complete.
    base = tmp_path / "c3"
    wheel.write_bytes(original)
    assert pipgate("import", str(export), "--cache-dir", str(base)).returncode == 0
    increment = pipgate("import", str(news), "--cache-dir", str(base), "--json")
    assert increment.returncode == 0, increment.stdout
    assert json.loads(increment.stdout)["files"] == 2


# --- metadata derived from cached wheels ------------------------------------------------


def access_lines(gate: PipgateProcess) -> list[str]:
    return [line for line in gate.log().splitlines() if '"GET /files/' in line]


def test_cached_wheels_get_pep658_metadata_and_installers_resolve_with_it(
    index: FakePyPI, tmp_path: Path
) -> None:
    with PipgateProcess(upstream=index.index_url, cache_dir=tmp_path / "cache") as gate:
        # The wheel is fetched once (as a prefetch would).
        page = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(gate.index_url + "app/", headers={"Accept": JSON}),
                timeout=30,
            ).read()
        )
        entry = page["files"][0]
        assert not entry.get("core-metadata")  # upstream publishes none
        url = urllib.parse.urljoin(gate.index_url + "app/", entry["url"])
        assert urllib.request.urlopen(url, timeout=30).read() == APP.data
        metadata_sha = hashlib.sha256(APP.metadata or b"").hexdigest()
        for _ in range(100):  # extracted just after the commit
            page = json.loads(
                urllib.request.urlopen(
                    urllib.request.Request(gate.index_url + "app/", headers={"Accept": JSON}),
                    timeout=30,
                ).read()
            )
            if page["files"][0].get("core-metadata"):
                break
            time.sleep(0.05)
        assert page["files"][0]["core-metadata"] == {"sha256": metadata_sha}
        html = urllib.request.urlopen(gate.index_url + "app/", timeout=30).read().decode()
        assert f'data-core-metadata="sha256={metadata_sha}"' in html
        metadata = urllib.request.urlopen(url + ".metadata", timeout=30).read()
        assert metadata == APP.metadata  # byte-identical to the wheel's METADATA

        before = len(access_lines(gate))
        (tmp_path / "req.in").write_text("app\n")
        compiled = uv_run(
            "pip", "compile", "req.in", "--index-url", gate.index_url, "--no-cache",
            "--python", sys.executable, cwd=tmp_path,
        )  # fmt: skip
        assert compiled.returncode == 0, compiled.stderr
        lines = access_lines(gate)[before:]
        app_lines = [line for line in lines if APP.filename in line]
        assert app_lines and all(".metadata" in line for line in app_lines), lines
        before = len(access_lines(gate))
        report = tmp_path / "report.json"
        dry = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir",
                "--dry-run", "--ignore-installed", "--report", str(report),
                "--index-url", gate.index_url, "app",
            ],
            capture_output=True, text=True, timeout=180, check=False, env=clean_env(),
        )  # fmt: skip
        assert dry.returncode == 0, dry.stdout + dry.stderr
        app_lines = [line for line in access_lines(gate)[before:] if APP.filename in line]
        assert app_lines and all(".metadata" in line for line in app_lines), app_lines


def zip_bomb_wheel(tmp_path: Path) -> BuiltDist:
    """A wheel whose METADATA inflates to 200 MiB of zeros."""
    path = tmp_path / "bomb-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/__init__.py", "")
        with zf.open("bomb-1.0.dist-info/METADATA", "w") as member:
            zero = bytes(1 << 20)
            for _ in range(200):
                member.write(zero)
        zf.writestr("bomb-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    data = path.read_bytes()
    return BuiltDist("bomb", "bomb", "1.0", path.name, data, hashlib.sha256(data).hexdigest(), None)


def test_a_zip_bomb_wheel_is_served_but_gets_no_metadata(tmp_path: Path) -> None:
    bomb = zip_bomb_wheel(tmp_path)
    fake = FakePyPI()
    fake.add(bomb, metadata=False)
    fake.start()
    try:
        with PipgateProcess(upstream=fake.index_url, cache_dir=tmp_path / "cache") as gate:
            page_url = gate.index_url + "bomb/"
            request = urllib.request.Request(page_url, headers={"Accept": JSON})
            entry = json.loads(urllib.request.urlopen(request, timeout=30).read())["files"][0]
            url = urllib.parse.urljoin(page_url, entry["url"])
            assert urllib.request.urlopen(url, timeout=60).read() == bomb.data
            deadline = time.monotonic() + 10
            while "no metadata from" not in gate.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "no metadata from bomb-1.0-py3-none-any.whl" in gate.log()
            entry = json.loads(urllib.request.urlopen(request, timeout=30).read())["files"][0]
            assert not entry.get("core-metadata")
            assert status_and_body(url + ".metadata")[0] == 404
            assert status_and_body(gate.url + "/healthz")[0] == 200
    finally:
        fake.stop()


def test_prefetch_into_a_running_pipgate(index: FakePyPI, tmp_path: Path) -> None:
    cache = tmp_path / "server-cache"
    with PipgateProcess(upstream=index.index_url, cache_dir=cache) as gate:
        result = pipgate(
            "prefetch", "app", "--server", gate.url, "--cache-dir", str(tmp_path / "unused")
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert APP.filename in fetched(index)
        assert f'"GET /files/app/{APP.sha256}/{APP.filename}"' in gate.log()
    assert (cache / "blobs" / APP.sha256[:2] / APP.sha256[2:4] / APP.sha256).is_file()
    assert not (tmp_path / "unused" / "blobs").exists()
