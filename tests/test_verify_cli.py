"""``pipgate verify``: the whole-cache re-hash an operator runs from cron or by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

from pipgate.store.blobs import BlobStore
from tests.support import links
from tests.support.fake_pypi import FakePyPI
from tests.support.packages import sample_tree
from tests.support.server import PipgateProcess

JSON = "application/vnd.pypi.simple.v1+json"


def run_verify(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipgate", "verify", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def warm(gate: PipgateProcess, project: str) -> None:
    page_url = f"{gate.index_url}{project}/"
    request = urllib.request.Request(page_url, headers={"Accept": JSON})
    page = json.load(urllib.request.urlopen(request, timeout=30))
    for entry in page["files"]:
        urllib.request.urlopen(urljoin(page_url, entry["url"]), timeout=30).read()


def test_verify_finds_repairs_and_then_passes(upstream: FakePyPI, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with PipgateProcess(upstream=upstream.index_url, cache_dir=cache) as gate:
        warm(gate, "beta")
    beta = next(d for d in sample_tree() if d.filename == "beta-1.0-py3-none-any.whl")
    blob = BlobStore(cache).path(beta.sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))  # bit rot

    # Two wheels of beta, and the METADATA pipgate extracted from each.
    on_disk = len(list(BlobStore(cache).iter_blobs()))
    assert on_disk == 4
    found = run_verify(cache, "--json")
    assert found.returncode == 3, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert [c["sha256"] for c in report["corrupt"]] == [beta.sha256]
    assert report["checked"] == on_disk

    repaired = run_verify(cache, "--repair")
    assert repaired.returncode == 1
    assert beta.sha256 in repaired.stdout
    assert not blob.exists()

    clean = run_verify(cache)
    assert clean.returncode == 0, clean.stdout
    assert f"{on_disk - 1} ok" in clean.stdout


def test_verify_without_a_cache_says_so(tmp_path: Path) -> None:
    result = run_verify(tmp_path / "nothing-here")
    assert result.returncode == 2
    assert "no cache directory" in result.stderr


def test_file_without_published_hash_is_cached_unverified_and_reported(
    upstream: FakePyPI, tmp_path: Path
) -> None:
    from tests.support.packages import build_wheel

    private = build_wheel("nohash", "1.0")
    upstream.add(private, metadata=False, hashed=False)
    cache = tmp_path / "cache"
    with PipgateProcess(upstream=upstream.index_url, cache_dir=cache) as gate:
        url = links.file_url(gate.index_url, "nohash", private.filename)
        assert "/files/nohash/u" in url  # keyed by its upstream URL, not a hash
        for expected in ("miss", "hit"):
            with urllib.request.urlopen(url, timeout=30) as resp:
                assert resp.headers["X-Pipgate-Cache"] == expected
                assert resp.read() == private.data
    report = json.loads(run_verify(cache, "--json").stdout)
    assert [u["sha256"] for u in report["unverified"]] == [private.sha256]
