"""Sign-in for the whole server: HTTP Basic authentication checked by one ASGI middleware
in front of every route Gradio and groco register (the page, ``/gradio_api/...``, the JSON
routes, thumbnails, ``file=`` paths, websockets), so no route can be added that skips it.

Credentials come from a file of ``user:HASH`` lines (``groco passwd FILE USER`` writes
them; blank lines and ``#`` comments are ignored) or from an environment variable holding
``user:password`` entries, one per line (``--auth env:NAME``). ``HASH`` is
``pbkdf2_sha256$ITERATIONS$SALT$DIGEST`` (base64 salt and digest), Django's format:
``DIGEST = PBKDF2-HMAC-SHA256(password, SALT, ITERATIONS)``. A plain password in a file
is refused, so none is kept at rest.

Browsers ask for the user and password once and send them with every request of the page;
``curl -u user:password``; ``gradio_client.Client(url, httpx_kwargs={"auth": (user,
password)})``. Basic credentials are readable on the wire without TLS: serve with
``--ssl-certfile/--ssl-keyfile`` beyond a trusted network.

A verified ``Authorization`` header is remembered (its SHA-256, in memory), so the slow
hash runs once per user and password, not per request; checks of new headers run one at a
time, so a flood of wrong passwords costs one core at most.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.middleware import Middleware

SCHEME = "pbkdf2_sha256"
ITERATIONS = 600_000
"""PBKDF2-HMAC-SHA256 iterations of a new hash (OWASP's 2023 figure)."""
REALM = "groco"
REMEMBERED = 1024
"""Distinct ``Authorization`` headers whose verdict is kept (good and bad alike)."""
STARTUP_PATH = "/gradio_api/startup-events"
"""Gradio's launch calls this route of its own server, without credentials, to start the
queue; the middleware lets the first such call from loopback through, and no other."""


class AuthError(ValueError):
    """A credentials file or variable groco cannot use (one line)."""


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None,
                  ) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$DIGEST`` of ``password`` (a random 16-byte salt)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join([SCHEME, str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (constant-time comparison)."""
    _, iterations, salt, digest = _parse_hash(hashed)
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def _parse_hash(hashed: str) -> tuple[str, int, bytes, bytes]:
    parts = hashed.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise AuthError(f"not a {SCHEME} hash")
    try:
        return (parts[0], int(parts[1]), base64.b64decode(parts[2], validate=True),
                base64.b64decode(parts[3], validate=True))
    except ValueError:
        raise AuthError(f"not a {SCHEME} hash") from None


@dataclass(frozen=True)
class Credentials:
    """Who may sign in: user name -> password hash."""

    users: dict[str, str]

    def __post_init__(self) -> None:
        if not self.users:
            raise AuthError("no user to sign in with: add one with `groco passwd FILE USER`")

    @classmethod
    def read(cls, source: str | Path) -> Credentials:
        """From a file of ``user:HASH`` lines, or ``env:NAME`` (``user:password`` lines in
        the environment variable ``NAME``, hashed here)."""
        text = str(source)
        if text.startswith("env:"):
            name = text[4:]
            value = os.environ.get(name)
            if not value:
                raise AuthError(f"--auth {text}: the environment variable {name} is not set "
                                "or empty (it holds user:password lines)")
            return cls(_entries(value, f"${name}", plain=True))
        path = Path(source)
        try:
            content = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AuthError(f"{path}: no such credentials file (write one with `groco "
                            "passwd FILE USER`)") from None
        except (OSError, UnicodeDecodeError) as error:
            raise AuthError(f"{path}: cannot read the credentials file: {error}") from None
        return cls(_entries(content, str(path), plain=False))

    def check(self, user: str, password: str) -> bool:
        """Whether ``user`` signs in with ``password`` (a stored user or not, the same
        work, so timing does not tell which names exist)."""
        hashed = self.users.get(user)
        if hashed is None:
            check_password(password, next(iter(self.users.values())))
            return False
        return check_password(password, hashed)


def _entries(text: str, where: str, plain: bool) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, secret = line.partition(":")
        if not sep or not user or not secret:
            expected = "password" if plain else "HASH"
            raise AuthError(f"{where}, line {number}: expected user:{expected}")
        if secret.startswith(SCHEME + "$"):
            try:
                _parse_hash(secret)
            except AuthError:
                raise AuthError(f"{where}, line {number}: a damaged {SCHEME} hash") from None
        elif plain:
            secret = hash_password(secret)
        else:
            raise AuthError(f"{where}, line {number}: the password is not hashed; write the "
                            "line with `groco passwd FILE USER`")
        users[user] = secret
    return users


def set_password(path: str | Path, user: str, password: str) -> bool:
    """Write ``user``'s hashed password into the credentials file at ``path`` (created
    with mode 600 if missing), replacing the user's line if there is one; returns whether
    the user was new. Written to a temporary file and renamed, so a crash loses nothing."""
    if not user or ":" in user or user != user.strip():
        raise AuthError(f"user name {user!r}: no colon, no surrounding spaces, not empty")
    if not password:
        raise AuthError("the password is empty")
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    entry = f"{user}:{hash_password(password)}"
    new = True
    for number, line in enumerate(lines):
        if line.strip().partition(":")[0] == user and not line.strip().startswith("#"):
            lines[number] = entry
            new = False
    if new:
        lines.append(entry)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
        out.flush()
        os.fsync(out.fileno())
    if path.exists():
        os.chmod(temporary, path.stat().st_mode & 0o777)
    os.replace(temporary, path)
    return new


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, 127.0.0.0/8,
    ``::1``)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BasicAuth:
    """ASGI middleware: every HTTP request and websocket without valid Basic credentials
    gets 401 (with ``WWW-Authenticate``, so a browser asks) before any route sees it."""

    def __init__(self, app: Any, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()
        self._one_check = threading.Lock()
        self._startup_pending = True

    def _verdict(self, header: bytes) -> bool:
        key = hashlib.sha256(header).digest()
        with self._one_check:
            if key in self._verdicts:
                self._verdicts.move_to_end(key)
                return self._verdicts[key]
            verdict = self._check(header)
            self._verdicts[key] = verdict
            if len(self._verdicts) > REMEMBERED:
                self._verdicts.popitem(last=False)
            return verdict

    def _check(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except ValueError:
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and self.credentials.check(user, password)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if (self._startup_pending and scope["type"] == "http"
                and scope.get("path") == STARTUP_PATH
                and is_loopback(str((scope.get("client") or ("",))[0]))):
            self._startup_pending = False
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization")
        if header is not None and await anyio.to_thread.run_sync(self._verdict, header):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "sign in required", "detail": "sign in required"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate",
                                 f'Basic realm="{REALM}", charset="UTF-8"'.encode())]})
        await send({"type": "http.response.body", "body": body})


def basic_auth(credentials: Credentials) -> Middleware:
    """The middleware entry for ``FastAPI(middleware=[...])``."""
    return Middleware(BasicAuth, credentials=credentials)
