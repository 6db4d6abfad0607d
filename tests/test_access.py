"""Authentication for reads: htpasswd users (bcrypt) and read tokens, what clients see
without them, real pip, uv and poetry with credentials, the user in the audit trail,
and the secret nowhere else."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import bcrypt
import pytest
import uv
from aiohttp.test_utils import TestClient

from pipgate.audit import AuditLog, AuditRecord, query
from pipgate.web import auth
from pipgate.web.auth import (
    AuthFileError,
    Basic,
    Bearer,
    FailureLimiter,
    Malformed,
    VerifiedMemo,
    parse_authorization,
    parse_htpasswd,
    parse_tokens,
)
from pipgate.web.state import SERVICES
from tests.conftest import GateFactory
from tests.support.clients import TIMEOUT, clean_env, installed, pip_install, uv_install
from tests.support.fake_pypi import FakePyPI
from tests.support.links import JSON
from tests.support.metrics import metric_value
from tests.support.packages import sample_tree
from tests.support.server import PipgateProcess, free_port

ALPHA = next(d for d in sample_tree() if d.filename == "alpha-1.0-py3-none-any.whl")
EXPECTED = {"alpha": "1.0", "beta": "1.0", "gamma": "0.5", "delta": "3.0"}
#: What ``htpasswd -nbB ci 'correct horse battery staple'`` (Apache 2.4) printed.
REAL_HTPASSWD = "ci:$2y$05$eUDNxILshEba8zVysai./.JxeEgvyHgycO0PmYByBLaqZP5B7Wfba"
CI_PASSWORD = "correct horse battery staple"
TOKEN = "tok_9Zq3xW7pL2mN5vB8cR1dF4"
OTHER_TOKEN = "tok_4Hh6Jj8Kk0Ll2Mm4Nn6Pp8"
ROOT = Path(__file__).resolve().parent.parent
POETRY = ROOT / "build" / "poetry" / "bin" / "poetry"


def htpasswd_line(user: str, password: str) -> str:
    """What ``htpasswd -B`` writes, at bcrypt's lowest cost (tests stay fast)."""
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}"


def basic(user: str, password: str) -> dict[str, str]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def credentials(tmp_path: Path) -> dict[str, Path]:
    """An htpasswd file (ci, from the real tool; dev) and a tokens file (bot, ops)."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"# the CI user\n{REAL_HTPASSWD}\n{htpasswd_line('dev', 'dev-pw')}\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"bot:{TOKEN}\n\nops:{OTHER_TOKEN}\n")
    return {"htpasswd": htpasswd, "read_tokens": tokens}


@pytest.fixture
async def locked(make_gate: GateFactory, credentials: dict[str, Path]) -> TestClient:
    """pipgate in-process with read authentication."""
    return await make_gate(**credentials)


async def file_path(gate: TestClient, headers: dict[str, str]) -> str:
    """alpha's file URL as its page gives it, fetched with ``headers``."""
    resp = await gate.get("/simple/alpha/", headers={"Accept": JSON, **headers})
    assert resp.status == 200
    page = json.loads(await resp.read())
    url = next(f["url"] for f in page["files"] if f["filename"] == ALPHA.filename)
    return str(gate.make_url(urljoin("/simple/alpha/", url)).path)


# --- the credential files (pure) -------------------------------------------------------


def test_the_real_htpasswd_tool_s_bcrypt_lines_are_read() -> None:
    users = parse_htpasswd(f"# comment\n\n{REAL_HTPASSWD}\n")
    assert list(users) == ["ci"]
    assert bcrypt.checkpw(CI_PASSWORD.encode(), users["ci"])


BAD_HTPASSWD = {
    "no colon": ("just-a-line-without-colon", "line 1: expected user:bcrypt-hash"),
    "empty user": (":$2y$05$" + "a" * 53, "line 1: expected user:bcrypt-hash"),
    "md5": ("md5user:$apr1$oPQTOOh5$vNJDM93HQfl4zMikK7Uhg/", "a MD5 (apr1) hash"),
    "sha1": ("shauser:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "a SHA-1 hash"),
    "plain password": ("plain:hunter2-plain", "line 1: user plain: not a bcrypt hash"),
    "duplicate": (f"{REAL_HTPASSWD}\n{REAL_HTPASSWD}", "line 2: user ci appears twice"),
}


@pytest.mark.parametrize(("text", "message"), BAD_HTPASSWD.values(), ids=BAD_HTPASSWD.keys())
def test_a_bad_htpasswd_line_is_named_by_number_never_by_content(text: str, message: str) -> None:
    with pytest.raises(AuthFileError) as caught:
        parse_htpasswd(text)
    error = str(caught.value)
    assert error.startswith("auth.htpasswd: line ") and message in error
    secret = text.rpartition(":")[2]
    assert secret not in error and "\n" not in error


BAD_TOKENS = {
    "no colon": ("tokenwithoutuser", "line 1: expected user:token"),
    "short": ("bot:short-token", "a token has 16 to 512 characters"),
    "spaces": ("bot:a token with spaces in it", "only letters, digits"),
    "reserved user": (f"__token__:{TOKEN}", "__token__ is reserved"),
    "same token twice": (f"bot:{TOKEN}\nops:{TOKEN}", "line 2: user ops: the same token as line 1"),
}


@pytest.mark.parametrize(("text", "message"), BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_bad_token_line_is_named_by_number_never_by_content(text: str, message: str) -> None:
    with pytest.raises(AuthFileError) as caught:
        parse_tokens(text)
    error = str(caught.value)
    assert error.startswith("auth.tokens: line ") and message in error
    line = text.splitlines()[-1]
    assert (line.partition(":")[2] or line) not in error


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Basic " + base64.b64encode(b"ci:pw:with:colons").decode(), Basic("ci", "pw:with:colons")),
        ("basic " + base64.b64encode(b"u:").decode(), Basic("u", "")),
        (f"Bearer {TOKEN}", Bearer(TOKEN)),
        ("Basic not-base64!!", Malformed()),
        ("Basic " + base64.b64encode(b"no-colon").decode(), Malformed()),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), Malformed()),
        ("Bearer", Malformed()),
        ("Digest username=ci", Malformed()),
        ("Bearer " + "x" * 10_000, Malformed()),
    ],
)
def test_authorization_headers_are_parsed_or_refused(header: str | None, expected: Any) -> None:
    assert parse_authorization(header) == expected


def test_the_memo_remembers_successes_for_a_while_and_a_bounded_number() -> None:
    memo = VerifiedMemo(ttl=0.05, entries=2)
    first, second, third = (memo.key("ci", p) for p in ("a", "b", "c"))
    assert first != memo.key("ci", "A") and memo.key("ci", "a") == first
    memo.add(first)
    memo.add(second)
    memo.add(third)
    assert not memo.hit(first) and memo.hit(second) and memo.hit(third)
    time.sleep(0.06)
    assert not memo.hit(third)
    assert VerifiedMemo().key("ci", "a") != first  # a key of its own per process


def test_the_failure_limiter_blocks_an_address_until_its_window_ends() -> None:
    limiter = FailureLimiter(limit=3, window=10.0, clients=100)
    for _ in range(3):
        assert limiter.blocked("10.0.0.1", now=100.0) == 0
        limiter.failed("10.0.0.1", now=100.0)
    assert limiter.blocked("10.0.0.1", now=104.0) == pytest.approx(6.0)
    assert limiter.blocked("10.0.0.2", now=104.0) == 0
    assert limiter.blocked("10.0.0.1", now=110.0) == 0
    limiter.failed("10.0.0.1", now=110.0)
    assert limiter.blocked("10.0.0.1", now=110.0) == 0  # a new window


def test_the_failure_limiter_stays_bounded() -> None:
    limiter = FailureLimiter(limit=1, window=10.0, clients=50)
    for n in range(500):
        limiter.failed(f"10.0.{n // 256}.{n % 256}", now=1.0)
    assert len(limiter._seen) <= 50


# --- what a client sees ----------------------------------------------------------------


async def test_reads_are_open_when_no_credential_file_is_configured(gate: TestClient) -> None:
    assert (await gate.get("/simple/alpha/")).status == 200
    assert (await gate.get("/")).status == 200


@pytest.mark.parametrize("path", ["/simple/", "/simple/alpha/", "/simple", "/", "/-/setup", "/x"])
async def test_without_credentials_every_read_is_a_401_with_a_basic_challenge(
    locked: TestClient, path: str
) -> None:
    resp = await locked.get(path, allow_redirects=False)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pipgate"'
    assert await resp.text() == (
        "pipgate: authentication required: a user name and password, or a read token\n"
    )


async def test_files_need_credentials_too(locked: TestClient, upstream: FakePyPI) -> None:
    path = await file_path(locked, basic("ci", CI_PASSWORD))
    for method in ("GET", "HEAD"):
        resp = await locked.request(method, path)
        assert resp.status == 401 and "WWW-Authenticate" in resp.headers
    assert upstream.downloads(ALPHA.filename) == 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/-/failures"])
async def test_probes_and_the_scrape_stay_open(locked: TestClient, path: str) -> None:
    assert (await locked.get(path)).status == 200


CREDENTIALS = {
    "htpasswd user (htpasswd -B)": (basic("ci", CI_PASSWORD), "ci"),
    "htpasswd user (bcrypt)": (basic("dev", "dev-pw"), "dev"),
    "bearer token": (bearer(TOKEN), "bot"),
    "token as the password of its owner": (basic("bot", TOKEN), "bot"),
    "token as the password of __token__": (basic("__token__", OTHER_TOKEN), "ops"),
}


@pytest.mark.parametrize(("headers", "user"), CREDENTIALS.values(), ids=CREDENTIALS.keys())
async def test_each_kind_of_credential_reads_and_names_its_user_in_the_audit_trail(
    locked: TestClient, tmp_path: Path, headers: dict[str, str], user: str
) -> None:
    path = await file_path(locked, headers)
    resp = await locked.get(path, headers=headers)
    assert resp.status == 200 and await resp.read() == ALPHA.data
    rows: list[dict[str, Any]] = []
    for _ in range(100):  # the row is kept when the handler returns, just after the body
        await locked.app[SERVICES].audit.flush()
        if rows := query(tmp_path / "cache", user=user):
            break
        await asyncio.sleep(0.01)
    assert [(r["filename"], r["status"]) for r in rows] == [(ALPHA.filename, 200)]
    assert query(tmp_path / "cache", user="somebody-else") == []


WRONG = {
    "wrong password": basic("ci", "Tr0ub4dor&3"),
    "unknown user": basic("mallory", CI_PASSWORD),
    "another user's token": basic("ci", TOKEN),
    "token as the user name": basic(TOKEN, ""),
    "unknown bearer token": bearer("tok_" + "0" * 24),
    "not base64": {"Authorization": "Basic %%%"},
    "another scheme": {"Authorization": "Digest username=ci"},
    "admin token without an admin api": bearer("some-admin-token-12345"),
}


@pytest.mark.parametrize("headers", WRONG.values(), ids=WRONG.keys())
async def test_wrong_credentials_are_a_401_and_counted(
    locked: TestClient, headers: dict[str, str]
) -> None:
    resp = await locked.get("/simple/alpha/", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pipgate"'
    assert "authentication failed" in await resp.text()
    text = await (await locked.get("/metrics")).text()
    assert metric_value(text, "pipgate_auth_refusals_total", scope="read", cause="invalid") == 1
    assert metric_value(text, "pipgate_auth_refusals_total", scope="read", cause="missing") == 0


async def test_failed_attempts_are_logged_with_known_user_names_only(
    locked: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await locked.get("/simple/", headers=basic("ci", "Sup3r-Secret-Guess"))
    await locked.get("/simple/", headers=basic(TOKEN + "x", "whatever-Pa55"))  # in the wrong field
    failed = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "auth_failed"]
    assert len(failed) == 2
    assert "user=ci " in failed[0] and "user=- " in failed[1]
    for secret in ("Sup3r-Secret-Guess", TOKEN, "whatever-Pa55"):
        assert secret not in caplog.text


async def test_a_good_password_costs_one_bcrypt_check_however_many_requests(
    make_gate: GateFactory, credentials: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    gate = await make_gate(**credentials)
    headers = basic("ci", CI_PASSWORD)
    statuses = await asyncio.gather(*(gate.get("/healthz") for _ in range(2)))  # open
    assert [s.status for s in statuses] == [200, 200] and checks == []
    # A client's first requests arrive together: they share one check.
    together = await asyncio.gather(
        *(gate.get("/simple/alpha/", headers=headers) for _ in range(8))
    )
    assert [r.status for r in together] == [200] * 8
    for _ in range(5):
        assert (await gate.get("/simple/alpha/", headers=headers)).status == 200
    assert len(checks) == 1
    assert (await gate.get("/simple/alpha/", headers=basic("ci", "wrong"))).status == 401
    assert len(checks) == 2  # failures are never remembered


async def test_a_remembered_password_is_checked_again_after_its_ttl(
    make_gate: GateFactory, credentials: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "MEMO_TTL", 0.2)
    gate = await make_gate(**credentials)
    memo = gate.app[auth.GATE].memo
    key = memo.key("ci", CI_PASSWORD)
    assert (await gate.get("/simple/", headers=basic("ci", CI_PASSWORD))).status == 200
    assert memo.hit(key)
    await asyncio.sleep(0.25)
    assert not memo.hit(key)


async def test_an_address_with_too_many_wrong_credentials_is_refused_for_a_while(
    make_gate: GateFactory, credentials: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "MAX_FAILURES", 3)
    monkeypatch.setattr(auth, "FAILURE_WINDOW", 0.5)
    gate = await make_gate(**credentials)
    for _ in range(3):
        assert (await gate.get("/simple/", headers=basic("ci", "guess"))).status == 401
    limited = await gate.get("/simple/", headers=basic("ci", CI_PASSWORD))
    assert limited.status == 429 and 1 <= int(limited.headers["Retry-After"]) <= 1
    assert "too many failed authentication attempts" in await limited.text()
    text = await (await gate.get("/metrics")).text()
    assert metric_value(text, "pipgate_auth_refusals_total", cause="limited") == 1
    await asyncio.sleep(0.55)
    assert (await gate.get("/simple/", headers=basic("ci", CI_PASSWORD))).status == 200


async def test_changed_credential_files_take_effect_and_a_bad_one_is_refused(
    make_gate: GateFactory,
    credentials: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(auth, "WATCH_INTERVAL", 0.05)
    gate = await make_gate(**credentials)
    assert (await gate.get("/simple/", headers=bearer(OTHER_TOKEN))).status == 200
    credentials["read_tokens"].write_text(f"bot:{TOKEN}\n")  # ops's token revoked

    async def status_of(headers: dict[str, str]) -> int:
        return (await gate.get("/simple/", headers=headers)).status

    for _ in range(100):
        if await status_of(bearer(OTHER_TOKEN)) == 401:
            break
        await asyncio.sleep(0.02)
    assert await status_of(bearer(OTHER_TOKEN)) == 401
    assert await status_of(bearer(TOKEN)) == 200
    credentials["read_tokens"].write_text(f"bot:{TOKEN}\nops:{OTHER_TOKEN}\nbroken-line\n")
    for _ in range(100):
        if "read credentials not reloaded" in caplog.text:
            break
        await asyncio.sleep(0.02)
    assert "auth.tokens: line 3: expected user:token" in caplog.text
    assert await status_of(bearer(OTHER_TOKEN)) == 401  # the credentials in force stay
    assert await status_of(bearer(TOKEN)) == 200


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("htpasswd", f"{REAL_HTPASSWD}\nmd5user:$apr1$oPQTOOh5$vNJDM93HQfl4zMikK7Uhg/\n",
         "auth.htpasswd: line 2: user md5user: a MD5 (apr1) hash"),
        ("tokens", f"bot:{TOKEN}\nops:tiny-secret\n", "auth.tokens: line 2: user ops: a token has"),
    ],
)  # fmt: skip
def test_a_bad_credential_file_stops_pipgate_with_one_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    variable = "PIPGATE_HTPASSWD" if name == "htpasswd" else "PIPGATE_READ_TOKENS"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
    result = subprocess.run(
        [sys.executable, "-m", "pipgate", "serve", "--port", str(free_port()),
         "--cache-dir", str(tmp_path / "cache"), "--upstream", "http://127.0.0.1:9/simple/"],
        capture_output=True, text=True, timeout=60, check=False, env={**env, variable: str(path)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert result.stderr.startswith(f"pipgate: configuration error: {message}")
    for secret in ("$apr1$oPQTOOh5", "tiny-secret", REAL_HTPASSWD.partition(":")[2]):
        assert secret not in result.stderr


# --- the audit trail's user column -----------------------------------------------------


OLD_SCHEMA = """
CREATE TABLE downloads (
    time REAL NOT NULL, client TEXT, installer TEXT, installer_version TEXT, python TEXT,
    project TEXT NOT NULL, filename TEXT NOT NULL, version TEXT, kind TEXT,
    sha256 TEXT, upstream TEXT, result TEXT, status INTEGER, bytes INTEGER,
    complete INTEGER, reason TEXT, request_id TEXT
);
"""


def record(user: str | None) -> AuditRecord:
    return AuditRecord(
        time=time.time(), client="10.0.0.9", installer="pip", installer_version="26.3",
        python="3.11.7", project="alpha", filename=ALPHA.filename, kind="file",
        sha256=ALPHA.sha256, upstream="pypi", result="hit", status=200, bytes=10,
        complete=True, user=user,
    )  # fmt: skip


async def test_an_audit_database_from_before_users_gains_the_column(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO downloads (time, project, filename, status) "
        "VALUES (?, 'alpha', 'old.whl', 200)",
        (time.time() - 60,),
    )
    db.commit()
    db.close()
    # Read before any write: the old file answers, as if no request had a user.
    assert [r["user"] for r in query(tmp_path)] == [None]
    assert query(tmp_path, user="ci") == []
    log = AuditLog(tmp_path, retention=86400)
    log.record(record("ci"))
    log.record(record(None))
    await log.flush()
    assert [(r["filename"], r["user"]) for r in query(tmp_path)] == [
        ("old.whl", None),
        (ALPHA.filename, "ci"),
        (ALPHA.filename, None),
    ]
    assert len(query(tmp_path, user="ci")) == 1
    # Two workers migrating at once: the second finds the column there.
    for _ in range(2):
        other = AuditLog(tmp_path, retention=86400)
        other.record(record("dev"))
        await other.flush()
    assert len(query(tmp_path, user="dev")) == 2


# --- real clients, a real process ------------------------------------------------------


@pytest.fixture
def locked_process(
    upstream: FakePyPI, credentials: dict[str, Path], tmp_path: Path
) -> Iterator[PipgateProcess]:
    env = {
        "PIPGATE_HTPASSWD": str(credentials["htpasswd"]),
        "PIPGATE_READ_TOKENS": str(credentials["read_tokens"]),
    }
    with PipgateProcess(upstream=upstream.index_url, cache_dir=tmp_path / "cache", env=env) as gate:
        yield gate


def with_credentials(index_url: str, user: str, password: str) -> str:
    from urllib.parse import quote

    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return index_url.replace("http://", f"http://{userinfo}@")


def audit_cli(cache: Path, *args: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPGATE_")}
    result = subprocess.run(
        [sys.executable, "-m", "pipgate", "audit", "--json", "--cache-dir", str(cache), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)["downloads"]
    return rows


@pytest.mark.clients
def test_pip_and_uv_install_with_credentials_in_the_url_and_fail_with_wrong_ones(
    locked_process: PipgateProcess, tmp_path: Path
) -> None:
    gate = locked_process
    good = with_credentials(gate.index_url, "ci", CI_PASSWORD)
    pip = pip_install(good, tmp_path / "pip", "alpha", extra=("--no-input",))
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert installed(tmp_path / "pip") == EXPECTED
    as_token = with_credentials(gate.index_url, "__token__", TOKEN)
    uv_run = uv_install(as_token, tmp_path / "uv", "alpha")
    assert uv_run.returncode == 0, uv_run.stdout + uv_run.stderr
    assert installed(tmp_path / "uv") == EXPECTED

    wrong = with_credentials(gate.index_url, "ci", "not-the-password")
    pip_wrong = pip_install(wrong, tmp_path / "pip-wrong", "alpha", extra=("--no-input",))
    assert pip_wrong.returncode != 0
    assert "401 Error, Credentials not correct" in pip_wrong.stdout + pip_wrong.stderr
    uv_wrong = uv_install(wrong, tmp_path / "uv-wrong", "alpha")
    assert uv_wrong.returncode != 0 and "401 Unauthorized" in uv_wrong.stdout + uv_wrong.stderr
    none = pip_install(gate.index_url, tmp_path / "pip-none", "alpha", extra=("--no-input",))
    assert none.returncode != 0
    assert not installed(tmp_path / "pip-wrong") and not installed(tmp_path / "pip-none")
    gate.stop()  # the audit trail is written at shutdown at the latest
    by_user = {
        user: {r["installer"] for r in audit_cli(gate.cache_dir, "--user", user)}
        for user in ("ci", "bot")
    }
    assert by_user == {"ci": {"pip"}, "bot": {"uv"}}
    rows = audit_cli(gate.cache_dir, "--user", "ci")
    wheel = [r for r in rows if r["filename"] == ALPHA.filename]
    assert wheel and all(r["status"] == 200 and r["complete"] for r in wheel)
    assert_no_secret(gate, CI_PASSWORD, TOKEN, "not-the-password")


@pytest.mark.clients
def test_uv_takes_its_index_credentials_from_the_environment(
    locked_process: PipgateProcess, tmp_path: Path
) -> None:
    def run(password: str, target: Path) -> subprocess.CompletedProcess[str]:
        cmd = [
            uv.find_uv_bin(), "pip", "install", "--no-config", "--no-cache",
            "--python", sys.executable, "--default-index", f"pipgate={locked_process.index_url}",
            "--target", str(target), "alpha",
        ]  # fmt: skip
        env = clean_env(
            UV_PYTHON_DOWNLOADS="never",
            UV_INDEX_PIPGATE_USERNAME="dev",
            UV_INDEX_PIPGATE_PASSWORD=password,
        )
        return subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
        )

    ok = run("dev-pw", tmp_path / "ok")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert installed(tmp_path / "ok") == EXPECTED
    wrong = run("dev-pw-wrong", tmp_path / "wrong")
    assert wrong.returncode != 0 and "401 Unauthorized" in wrong.stderr


@pytest.mark.clients
def test_poetry_takes_its_source_credentials_from_the_environment(
    locked_process: PipgateProcess, tmp_path: Path
) -> None:
    if not POETRY.exists():
        pytest.fail(f"{POETRY} is missing: run `bash scripts/test.sh`, which installs poetry there")
    project = tmp_path / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0.1.0"\nrequires-python = ">=3.11,<4"\n'
        'dependencies = ["alpha"]\n\n[tool.poetry]\npackage-mode = false\n\n'
        '[[tool.poetry.source]]\nname = "pipgate"\n'
        f'url = "{locked_process.index_url}"\npriority = "primary"\n'
    )

    def poetry(password: str) -> subprocess.CompletedProcess[str]:
        env = clean_env(
            POETRY_HTTP_BASIC_PIPGATE_USERNAME="ci",
            POETRY_HTTP_BASIC_PIPGATE_PASSWORD=password,
            POETRY_CACHE_DIR=str(tmp_path / f"poetry-cache-{password[:4]}"),
            POETRY_CONFIG_DIR=str(tmp_path / "poetry-config"),
            POETRY_VIRTUALENVS_IN_PROJECT="true",
            POETRY_KEYRING_ENABLED="false",
            POETRY_NO_INTERACTION="1",
        )
        return subprocess.run(
            [str(POETRY), "install", "--no-root"],
            cwd=project, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
        )  # fmt: skip

    wrong = poetry("wrong-password")
    assert wrong.returncode != 0
    assert "Authorization error accessing" in wrong.stdout + wrong.stderr
    ok = poetry(CI_PASSWORD)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    site = next((project / ".venv" / "lib").glob("python3.*/site-packages"))
    seeded = {"pip", "setuptools", "wheel"}  # what virtualenv puts in every venv
    assert {k: v for k, v in installed(site).items() if k not in seeded} == EXPECTED
    locked_process.stop()
    rows = audit_cli(locked_process.cache_dir, "--user", "ci")
    assert {r["installer"] for r in rows} == {"poetry"}
    assert_no_secret(locked_process, CI_PASSWORD, "wrong-password")


def test_a_raw_client_reads_with_a_bearer_token(
    locked_process: PipgateProcess, tmp_path: Path
) -> None:
    request = urllib.request.Request(
        locked_process.index_url + "alpha/", headers={"Accept": JSON, **bearer(TOKEN)}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        page = json.load(resp)
    href = next(f["url"] for f in page["files"] if f["filename"] == ALPHA.filename)
    url = urljoin(locked_process.index_url + "alpha/", href)
    authorized = urllib.request.Request(url, headers=bearer(TOKEN))
    with urllib.request.urlopen(authorized, timeout=30) as resp:
        assert resp.status == 200 and resp.read() == ALPHA.data
    bodies = []
    for headers in ({}, bearer(TOKEN[:-1] + "X")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30)
        assert refused.value.code == 401
        bodies.append(refused.value.read().decode())
    assert all(TOKEN[:-1] not in body for body in bodies)
    locked_process.stop()
    assert [r["user"] for r in audit_cli(locked_process.cache_dir, "--user", "bot")] == ["bot"]
    assert_no_secret(locked_process, TOKEN, TOKEN[:-1] + "X")


def assert_no_secret(gate: PipgateProcess, *secrets: str) -> None:
    """No secret in the log, nor in what the open endpoints say (the process may be
    stopped: then only the log is read)."""
    texts = [gate.log()]
    if gate.proc is not None and gate.proc.poll() is None:
        for path in ("/metrics", "/readyz", "/-/failures"):
            with urllib.request.urlopen(gate.url + path, timeout=10) as resp:
                texts.append(resp.read().decode())
    for secret in secrets:
        for text in texts:
            assert secret not in text
