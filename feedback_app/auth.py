"""Passwords (argon2), signed login tokens, and the login rate limit.

A password is hashed once, at login; every later request carries a token signed with
``itsdangerous`` under a secret kept in a file beside the database, so verifying a request costs one
HMAC (no hashing, no database read), and a restart logs no one out.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

_HASHER = PasswordHasher()  # argon2id with the library's maintained defaults
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Actor:
    """The user a request acts as; every service function takes it explicitly."""

    id: int
    username: str
    role: str  # admin | reviewer

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _HASHER.check_needs_rehash(stored_hash)


# A hash to verify against when the user does not exist, so a wrong username takes as long as a
# wrong password (no username probing by timing).
DUMMY_HASH = _HASHER.hash("no-such-user-" + secrets.token_hex(8))


def load_or_create_secret(path: str | os.PathLike) -> bytes:
    """The signing secret in ``path``; created (mode 600) on first use."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes().strip()
        if len(data) >= 32:
            return data
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    try:
        os.link(tmp, path)  # atomic create-if-absent: two starting servers agree on one secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


class TokenSigner:
    """Issues and checks login tokens carrying the user's id, name and role."""

    def __init__(self, secret: bytes, max_age: int):
        self._serializer = URLSafeTimedSerializer(secret, salt="rlhf-feedback-login")
        self.max_age = max_age

    def issue(self, actor: Actor) -> str:
        return self._serializer.dumps({"id": actor.id, "u": actor.username, "r": actor.role})

    def verify(self, token: str) -> Actor | None:
        try:
            data = self._serializer.loads(token, max_age=self.max_age)
        except (SignatureExpired, BadSignature):
            return None
        return Actor(id=int(data["id"]), username=str(data["u"]), role=str(data["r"]))


class LoginRateLimiter:
    """At most ``per_minute`` failed logins per (username, client) in any 60 s window."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        window = self._failures[key]
        while window and window[0] <= now - 60:
            window.popleft()
        return window

    def retry_after(self, username: str, client: str, now: float | None = None) -> float:
        """Seconds until the next attempt is allowed; 0 when allowed now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._recent((username, client), now)
            if len(window) < self.per_minute:
                return 0.0
            return max(0.0, window[0] + 60 - now)

    def failed(self, username: str, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent((username, client), now).append(now)

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username, client), None)
