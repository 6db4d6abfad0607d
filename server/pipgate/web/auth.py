"""Access control: who may read through pipgate, and who may administer it.

**Reads** are open unless ``auth.htpasswd`` or ``auth.tokens`` is configured. Then
every route but the probes and the scrape (``/healthz``, ``/readyz``, ``/metrics``, the
reduced ``/-/failures``) needs one of:

- ``Authorization: Basic`` with an htpasswd user and password (bcrypt);
- ``Authorization: Bearer <read token>``;
- ``Authorization: Basic`` with a read token as the password and, as the user name,
  the token's owner or ``__token__`` (pip, uv and poetry only speak Basic).

Anything else is a 401 with ``WWW-Authenticate: Basic realm="pipgate"``. The user goes
on the request (:data:`~pipgate.web.middleware.USER`) for the audit trail.

**The admin API** (``/-/admin/``) exists only when ``auth.admin_token`` is set (every
URL under it is a 404 otherwise), and needs that token as a Bearer token or as the
Basic password (any user name, so a browser can log in): none is a 401, a wrong one a
403.

bcrypt runs in a worker thread, at most :data:`BCRYPT_SLOTS` at once per worker (so a
flood of wrong passwords cannot take every thread the disk work needs); a successful
check is remembered for :data:`MEMO_TTL` seconds, keyed by a keyed hash of user and
password, so a client's next requests cost one HMAC. Tokens and the admin token are
compared in constant time. An address with :data:`MAX_FAILURES` wrong credentials in
:data:`FAILURE_WINDOW` seconds gets 429 until the window ends. Secrets never reach a
log line, a metric or a body: only known user names are logged.

The credential files are read at start (a bad line stops pipgate with one line naming
the key and the line number, never its content) and watched: a changed file is read
again within :data:`WATCH_INTERVAL` seconds; a bad one is refused and the credentials
in force stay.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler

from pipgate.config import Config
from pipgate.web.http import text_error
from pipgate.web.middleware import USER, client_address
from pipgate.web.state import services

log = logging.getLogger("pipgate.auth")

#: Route names that stay open when reads need credentials: probes, the scrape, and the
#: reduced failure summary (none of them names a project, a host or a path).
#: ``fleet_blob`` checks the fleet secret itself (replica to replica, no user).
OPEN_ROUTES = frozenset({"healthz", "readyz", "metrics", "failures", "fleet_blob"})
ADMIN_PREFIX = "/-/admin"
#: The Basic user name that says "the password is a read token" (PyPI's convention).
TOKEN_USER = "__token__"
READ_CHALLENGE = 'Basic realm="pipgate"'
ADMIN_CHALLENGE = 'Basic realm="pipgate admin"'
#: Shortest read token accepted (the admin token has the same floor, in the config).
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 512
MAX_USER_LENGTH = 128
#: bcrypt checks running at once in one worker.
BCRYPT_SLOTS = 2
#: bcrypt reads at most 72 bytes of a password; Apache's htpasswd truncates the same way.
BCRYPT_MAX_PASSWORD = 72
#: Seconds a successful password check is remembered, and how many are.
MEMO_TTL = 60.0
MEMO_ENTRIES = 1024
#: Wrong credentials one client address may send per window (per worker).
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
#: Client addresses the failure limiter remembers at most.
MAX_CLIENTS = 10_000
#: Seconds between two looks at the credential files.
WATCH_INTERVAL = 2.0

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
_OTHER_HASHES = (("$apr1$", "MD5 (apr1)"), ("{SHA}", "SHA-1"), ("$1$", "MD5-crypt"))


class AuthFileError(ValueError):
    """A credential file that cannot be used (one line naming the key and the line)."""


# --- the credential files (pure parsing) -----------------------------------------------


@dataclass(frozen=True)
class ReadCredentials:
    """Who may read: htpasswd users with their bcrypt hashes, and read tokens (kept as
    sha256 digests, with their owners)."""

    users: Mapping[str, bytes]
    tokens: tuple[tuple[bytes, str], ...] = ()

    def token_owner(self, token: str) -> str | None:
        """The owner of ``token``, compared with every token in constant time."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        owner = None
        for known, user in self.tokens:  # no early exit: the time says nothing
            if hmac.compare_digest(known, digest):
                owner = user
        return owner

    def knows(self, user: str) -> bool:
        """Whether ``user`` is a configured name (only those are ever logged)."""
        return user in self.users or user == TOKEN_USER or any(u == user for _, u in self.tokens)


def _valid_user(user: str) -> bool:
    printable = all(c.isprintable() and not c.isspace() for c in user)
    return 0 < len(user) <= MAX_USER_LENGTH and printable


def _lines(text: str) -> list[tuple[int, str]]:
    """Numbered lines that are neither blank nor ``#`` comments."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]


def parse_htpasswd(text: str, key: str = "auth.htpasswd") -> dict[str, bytes]:
    """``user:$2y$…`` lines (``htpasswd -B``) -> ``{user: hash}``; raises
    :class:`AuthFileError` naming the line, never its content."""
    users: dict[str, bytes] = {}
    first: dict[str, int] = {}
    for number, line in _lines(text):
        user, sep, hashed = line.partition(":")
        where = f"{key}: line {number}"
        if not sep or not _valid_user(user):
            raise AuthFileError(f"{where}: expected user:bcrypt-hash")
        if user in users:
            raise AuthFileError(f"{where}: user {user} appears twice (first on line {first[user]})")
        if not _BCRYPT.fullmatch(hashed):
            kind = next((name for prefix, name in _OTHER_HASHES if hashed.startswith(prefix)), None)
            what = f"a {kind} hash" if kind else "not a bcrypt hash"
            raise AuthFileError(
                f"{where}: user {user}: {what}; pipgate takes bcrypt only (htpasswd -B)"
            )
        users[user] = hashed.encode("ascii")
        first[user] = number
    return users


def parse_tokens(text: str, key: str = "auth.tokens") -> tuple[tuple[bytes, str], ...]:
    """``user:token`` lines -> ``((sha256 of token, user), …)``; raises
    :class:`AuthFileError` naming the line, never the token."""
    tokens: list[tuple[bytes, str]] = []
    first: dict[bytes, int] = {}
    for number, line in _lines(text):
        user, sep, token = line.partition(":")
        where = f"{key}: line {number}"
        if not sep or not _valid_user(user):
            raise AuthFileError(f"{where}: expected user:token")
        if user == TOKEN_USER:
            raise AuthFileError(f"{where}: {TOKEN_USER} is reserved; name the token's owner")
        if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
            raise AuthFileError(
                f"{where}: user {user}: a token has {MIN_TOKEN_LENGTH} to "
                f"{MAX_TOKEN_LENGTH} characters"
            )
        if not _TOKEN_CHARS.fullmatch(token):
            raise AuthFileError(
                f"{where}: user {user}: a token has only letters, digits and ._~+/=-"
            )
        digest = hashlib.sha256(token.encode()).digest()
        if digest in first:
            raise AuthFileError(f"{where}: user {user}: the same token as line {first[digest]}")
        first[digest] = number
        tokens.append((digest, user))
    return tuple(tokens)


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AuthFileError(f"{key}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise AuthFileError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None


def load_read_credentials(config: Config) -> ReadCredentials | None:
    """The read credentials of ``config`` (blocking), ``None`` when reads are open."""
    if config.htpasswd is None and config.read_tokens is None:
        return None
    users = parse_htpasswd(_read(config.htpasswd, "auth.htpasswd")) if config.htpasswd else {}
    tokens = parse_tokens(_read(config.read_tokens, "auth.tokens")) if config.read_tokens else ()
    return ReadCredentials(users, tokens)


# --- what a request presents (pure) ----------------------------------------------------


@dataclass(frozen=True)
class Basic:
    user: str
    password: str


@dataclass(frozen=True)
class Bearer:
    token: str


@dataclass(frozen=True)
class Malformed:
    """An ``Authorization`` header that is neither valid Basic nor Bearer."""


Presented = Basic | Bearer | Malformed


def parse_authorization(value: str | None) -> Presented | None:
    """The credentials in an ``Authorization`` header (``None``: there is none)."""
    if value is None or not value.strip():
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest and len(rest) <= MAX_TOKEN_LENGTH:
        return Bearer(rest)
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return Malformed()
        user, sep, password = decoded.partition(":")
        if sep and len(user) <= MAX_USER_LENGTH and len(password) <= MAX_TOKEN_LENGTH:
            return Basic(user, password)
    return Malformed()


# --- memory of good passwords, and of clients that send bad ones -----------------------


class VerifiedMemo:
    """Recent successful password checks, keyed by an HMAC (with a per-process key)
    of user and password: the hot path skips bcrypt, and the memory holds nothing a
    password could be guessed from offline."""

    def __init__(self, ttl: float = MEMO_TTL, entries: int = MEMO_ENTRIES) -> None:
        self._secret = secrets.token_bytes(32)
        self._ttl = ttl
        self._max = entries
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def key(self, user: str, password: str) -> bytes:
        data = user.encode() + b"\0" + password.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def hit(self, key: bytes) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._entries[key]
            return False
        return True

    def add(self, key: bytes) -> None:
        self._entries[key] = time.monotonic() + self._ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class FailureLimiter:
    """Wrong credentials per client address in a fixed window; past the limit the
    address is refused (429) without a check until its window ends."""

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        clients: int = MAX_CLIENTS,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clients = clients
        self._seen: dict[str, tuple[float, int]] = {}

    def blocked(self, client: str, now: float | None = None) -> float:
        """Seconds ``client`` must wait (0: it may try)."""
        entry = self._seen.get(client)
        if entry is None:
            return 0.0
        now = time.monotonic() if now is None else now
        started, count = entry
        if now - started >= self._window:
            del self._seen[client]
            return 0.0
        return self._window - (now - started) if count >= self._limit else 0.0

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        started, count = self._seen.get(client, (now, 0))
        if now - started >= self._window:
            started, count = now, 0
        if client not in self._seen and len(self._seen) >= self._clients:
            self._seen = {c: e for c, e in self._seen.items() if now - e[0] < self._window}
            if len(self._seen) >= self._clients:
                self._seen.clear()
        self._seen[client] = (started, count + 1)


# --- the gate: what one app (one worker) checks ----------------------------------------


class Verdict(StrEnum):
    """The outcome of a credential check (``missing`` and ``invalid`` are metric causes)."""

    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"


class Gate:
    """The credentials in force for one app, and the checks of a request against them."""

    def __init__(self, config: Config, reads: ReadCredentials | None) -> None:
        self._config = config
        self.reads = reads
        self._admin = config.admin_token.encode() if config.admin_token else None
        self.memo = VerifiedMemo(MEMO_TTL, MEMO_ENTRIES)
        self.limiter = FailureLimiter(MAX_FAILURES, FAILURE_WINDOW)
        self._slots = asyncio.Semaphore(BCRYPT_SLOTS)
        self._inflight: dict[bytes, asyncio.Task[bool]] = {}
        self._dummy: bytes | None = None
        self._stamp = _stamp(config)

    @classmethod
    def from_config(cls, config: Config) -> Gate:
        """Load the credential files (blocking); raises :class:`AuthFileError`."""
        return cls(config, load_read_credentials(config))

    @property
    def has_admin(self) -> bool:
        return self._admin is not None

    def admin_verdict(self, presented: Presented | None) -> Verdict:
        """Whether ``presented`` is the admin token (Bearer, or any user's Basic password)."""
        if presented is None:
            return Verdict.MISSING
        if isinstance(presented, Bearer):
            offered = presented.token
        elif isinstance(presented, Basic):
            offered = presented.password
        else:
            return Verdict.INVALID
        assert self._admin is not None
        good = hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), self._admin)
        return Verdict.OK if good else Verdict.INVALID

    async def read_user(self, presented: Presented) -> str | None:
        """The user ``presented`` authenticates as for reads, or ``None``."""
        reads = self.reads
        if reads is None:
            return None
        if isinstance(presented, Bearer):
            return reads.token_owner(presented.token)
        if not isinstance(presented, Basic):
            return None
        hashed = reads.users.get(presented.user)
        key = self.memo.key(presented.user, presented.password)
        if hashed is not None and self.memo.hit(key):
            return presented.user  # the hot path: one HMAC
        owner = reads.token_owner(presented.password)
        if owner is not None:
            return owner if presented.user in (owner, TOKEN_USER) else None
        # Unknown users cost a bcrypt check too: the time does not tell who exists.
        good = await self._check(key, presented.password, hashed)
        return presented.user if good and hashed is not None else None

    def known_user(self, presented: Presented | None) -> str:
        """The presented user name if it is a configured one, else ``-`` (a name typed
        into the wrong field may be a password)."""
        reads = self.reads
        if isinstance(presented, Basic) and reads is not None and reads.knows(presented.user):
            return presented.user
        return "-"

    async def _check(self, key: bytes, password: str, hashed: bytes | None) -> bool:
        """One bcrypt check per (user, password) at a time; later callers join it."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._remembered(key, password, hashed))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _remembered(self, key: bytes, password: str, hashed: bytes | None) -> bool:
        """The check, remembered when good before the task ends: a request arriving
        between its end and its waiters' wake-up finds the memo, not a second check."""
        good = await self._bcrypt(password, hashed)
        if good and hashed is not None:
            self.memo.add(key)
        return good

    async def _bcrypt(self, password: str, hashed: bytes | None) -> bool:
        data = password.encode("utf-8", "surrogateescape")[:BCRYPT_MAX_PASSWORD]
        async with self._slots:
            if hashed is None:
                if self._dummy is None:
                    self._dummy = await asyncio.to_thread(bcrypt.hashpw, b"-", _salt(self.reads))
                await asyncio.to_thread(bcrypt.checkpw, data, self._dummy)
                return False
            return await asyncio.to_thread(bcrypt.checkpw, data, hashed)

    async def watch(self) -> None:
        """Read the credential files again when they change, until cancelled."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = await asyncio.to_thread(_stamp, self._config)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                reads = await asyncio.to_thread(load_read_credentials, self._config)
            except AuthFileError as exc:
                log.error("read credentials not reloaded, those in force stay: %s", exc)
                continue
            self.reads = reads
            self.memo.clear()
            self._dummy = None
            log.info(
                "read credentials reloaded: %d users, %d tokens",
                len(reads.users) if reads else 0,
                len(reads.tokens) if reads else 0,
            )


def _salt(reads: ReadCredentials | None) -> bytes:
    """A salt with the cost of the configured hashes (so a dummy check takes as long)."""
    rounds = 12
    if reads is not None and reads.users:
        rounds = int(next(iter(reads.users.values()))[4:6])
    return bcrypt.gensalt(rounds)


def _stamp(config: Config) -> tuple[tuple[int, int, int] | None, ...]:
    """What identifies the credential files' current contents (blocking)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in (config.htpasswd, config.read_tokens):
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
    return tuple(stamps)


GATE = web.AppKey("auth_gate", Gate)


def install(app: web.Application, config: Config) -> None:
    """Put the gate of ``config`` on ``app`` and watch the credential files while it
    runs; raises :class:`AuthFileError` for a bad file."""
    gate = Gate.from_config(config)
    app[GATE] = gate

    async def watching(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(gate.watch(), name="auth-watch") if gate.reads else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.append(watching)


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


# --- the middleware --------------------------------------------------------------------


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Credentials for reads (when configured) and for the admin API; the user of a
    read goes on the request."""
    gate = request.app[GATE]
    route = request.match_info.route.name or ""
    if is_admin_path(request.path) or route.startswith("admin_"):
        if not gate.has_admin:
            return text_error(404, "not found")
        return await _checked(request, handler, gate, "admin")
    if gate.reads is None or route in OPEN_ROUTES:
        return await handler(request)
    return await _checked(request, handler, gate, "read")


async def _checked(
    request: web.Request, handler: Handler, gate: Gate, scope: str
) -> web.StreamResponse:
    client = client_address(request, services(request).config.trust_forwarded)
    wait = gate.limiter.blocked(client)
    if wait:
        return _refuse(request, scope, Verdict.INVALID, retry_after=wait)
    presented = parse_authorization(request.headers.get("Authorization"))
    if scope == "admin":
        verdict = gate.admin_verdict(presented)
    else:
        user = await gate.read_user(presented) if presented is not None else None
        verdict = Verdict.MISSING if presented is None else Verdict.OK if user else Verdict.INVALID
        if user:
            request[USER] = user
    if verdict == Verdict.OK:
        return await handler(request)
    if verdict == Verdict.INVALID:
        gate.limiter.failed(client)
        log.warning(
            "authentication failed: scope=%s client=%s user=%s path=%s",
            scope,
            client,
            gate.known_user(presented),
            request.path,
            extra={"event": "auth_failed", "scope": scope, "client": client},
        )
    return _refuse(request, scope, verdict)


def _refuse(
    request: web.Request, scope: str, verdict: Verdict, *, retry_after: float = 0.0
) -> web.Response:
    metrics = services(request).metrics
    if retry_after:
        metrics.auth_refusals.labels(scope=scope, cause="limited").inc()
        seconds = max(1, int(retry_after + 0.999))
        response = text_error(
            429, f"too many failed authentication attempts from this address; retry in {seconds}s"
        )
        response.headers["Retry-After"] = str(seconds)
        return response
    metrics.auth_refusals.labels(scope=scope, cause=verdict.value).inc()
    if scope == "admin" and verdict == Verdict.INVALID:
        return text_error(403, "wrong admin token")
    if scope == "admin":
        message = "admin token required (Authorization: Bearer TOKEN, or TOKEN as the password)"
    elif verdict == Verdict.MISSING:
        message = "authentication required: a user name and password, or a read token"
    else:
        message = "authentication failed: wrong user name, password or token"
    response = text_error(401, message)
    response.headers["WWW-Authenticate"] = ADMIN_CHALLENGE if scope == "admin" else READ_CHALLENGE
    return response
