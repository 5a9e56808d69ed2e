"""Accounts' rules and login sessions: usernames, the password policy, argon2 hashes, signed tokens
checked against the account's current state, and the login throttle's arithmetic.

A password is hashed once, at login; every later request carries a token signed with
``itsdangerous`` under a secret kept in a file beside the database. The token names the account and
its session version; ``SessionCheck`` holds each account's current role, active flag and session
version in memory, re-read from the database at most every ``ttl`` seconds. Password reset, role
change, disable and logout bump the version in the database and forget the cached entry in this
process, so an old token stops working at once here and within ``ttl`` seconds in every other server
process on the same database.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

_HASHER = PasswordHasher()  # argon2id with the library's maintained defaults
MIN_PASSWORD, MAX_PASSWORD = 8, 256  # one limit for the login form, the REST API and the CLI
MIN_PASSWORD_SCORE = 3  # zxcvbn's 0..4: 3 is "safely unguessable" for an online attack with throttling
MAX_USERNAME = 100


@dataclass(frozen=True)
class Actor:
    """The user a request acts as; every service function takes it explicitly."""

    id: int
    username: str
    role: str  # admin | reviewer

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# ---------------------------------------------------------------------------------------------------
# Usernames and passwords

# Control, format (zero-width, bidirectional overrides), line and paragraph separators, private use
# and unassigned characters: they make two names look alike, or one name look like another.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Co", "Cn"}


def normalize_username(name: str) -> str:
    """The stored form of a username (NFKC), or ``ValueError`` with the reason.

    Refuses whitespace and invisible or control characters anywhere, so that ``admin\\u200b`` or
    ``\\u202enimda`` cannot pose as ``admin``. Uniqueness is case-insensitive: see ``username_key``."""
    if not isinstance(name, str):
        raise ValueError("username: give a text")
    name = unicodedata.normalize("NFKC", name)
    if not 1 <= len(name) <= MAX_USERNAME:
        raise ValueError(f"username: give 1 to {MAX_USERNAME} characters")
    for ch in name:
        if ch.isspace() or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise ValueError(f"username: no spaces, control or invisible characters (found U+{ord(ch):04X})")
    return name


def username_key(name: str) -> str:
    """What makes two usernames the same account: the NFKC form, case-folded (``Admin`` is ``admin``).
    ``ValueError`` for a name ``normalize_username`` refuses."""
    return unicodedata.normalize("NFKC", normalize_username(name).casefold())


def check_password(password: str, username: str = "") -> None:
    """``ValueError`` with a clear message unless ``password`` meets the policy: 8 to 256 characters
    and a zxcvbn strength score of at least 3 (it rates dictionary words, common passwords, keyboard
    walks, repeats and the username itself). zxcvbn reads at most 72 characters: longer passwords are
    rated on their first 72."""
    from zxcvbn import zxcvbn

    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"password: give {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    rating = zxcvbn(password[:72], user_inputs=[username] if username else None)
    if rating["score"] < MIN_PASSWORD_SCORE:
        feedback = rating["feedback"]
        hint = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
        raise ValueError(f"password: too easy to guess (strength {rating['score']} of 4, need "
                         f"{MIN_PASSWORD_SCORE}). {hint or 'Use a few unrelated words or a longer password.'}")


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


# ---------------------------------------------------------------------------------------------------
# Tokens and sessions


def load_or_create_secret(path: str | os.PathLike) -> bytes:
    """The signing secret in ``path``; created (mode 600) on first use."""
    from feedback_app.files import tighten_private

    path = Path(path)
    if path.is_file():
        tighten_private(path)  # a key left 0644 (copied, restored) would let any local account forge sessions
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


@dataclass(frozen=True)
class AccountState:
    """What a request needs to know of its account, as the database has it now."""

    username: str
    role: str
    active: bool
    session_version: int  # bumped by password reset, role change, disable and logout


class SessionCheck:
    """Each account's current ``AccountState``, cached in memory for at most ``ttl`` seconds.

    ``load(user_id)`` reads the database (one primary-key read); ``forget(user_id)`` drops the entry
    after this process changed the account. A load that raced with a ``forget`` is not cached, so a
    stale state never outlives the change here."""

    def __init__(self, load: Callable[[int], AccountState | None], ttl: float,
                 clock: Callable[[], float] = time.monotonic, spread: Callable[[], float] = lambda: 1.0):
        # ``spread()`` is the share of ``ttl`` an entry lives (at most 1). The server draws it at random
        # from [0.5, 1]: accounts loaded together (all reviewers logging in after a restart) then do
        # not all expire in the same instant, where their reloads would queue on the event loop at once.
        self._load, self.ttl, self._clock, self._spread = load, ttl, clock, spread
        self._cache: dict[int, tuple[float, AccountState | None]] = {}
        self._generation = 0  # bumped by every forget
        self._lock = threading.Lock()

    def current(self, user_id: int) -> AccountState | None:
        now = self._clock()
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        state = self._load(user_id)
        with self._lock:
            if generation == self._generation:
                self._cache[user_id] = (now + self.ttl * min(1.0, self._spread()), state)
        return state

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._generation += 1
            self._cache.pop(user_id, None)


class TokenSigner:
    """Issues login tokens (account id and session version, signed) and turns a token back into the
    account's CURRENT ``Actor``: None when the token is forged or expired, the account is disabled or
    gone, or its session version moved on (logout, reset, role change, disable)."""

    def __init__(self, secret: bytes, max_age: int, accounts: SessionCheck):
        self._serializer = URLSafeTimedSerializer(secret, salt="rlhf-feedback-login")
        self.max_age = max_age
        self.accounts = accounts

    def issue(self, actor: Actor) -> str:
        state = self.accounts.current(actor.id)
        version = state.session_version if state is not None else -1
        return self._serializer.dumps({"id": actor.id, "u": actor.username, "v": version})

    def verify(self, token: str) -> Actor | None:
        try:
            data = self._serializer.loads(token, max_age=self.max_age)
            user_id, version = int(data["id"]), int(data["v"])
        except (SignatureExpired, BadSignature, KeyError, TypeError, ValueError):
            return None  # tokens of the first round carried no version: log in again
        state = self.accounts.current(user_id)
        if state is None or not state.active or state.session_version != version:
            return None
        return Actor(id=user_id, username=state.username, role=state.role)


# ---------------------------------------------------------------------------------------------------
# Login throttle: pure arithmetic; the counters live in the database (``Store.login``), so that
# concurrent attempts and several server processes share them.

ACCOUNT_WINDOW = 900.0  # an account's failed logins are forgotten after 15 minutes without one
ACCOUNT_FIRST_DELAY = 5.0  # the first wait once the free failures are spent (longer than a burst of tries takes)
ACCOUNT_MAX_DELAY = 60.0  # the longest wait the per-account back-off asks for
ADDRESS_WINDOW = 60.0  # per-address attempts are counted per minute


def account_wait(failures: int, last_at: float, now: float, free: int) -> tuple[float, int]:
    """(seconds to wait before this account may try again, its failures still counted).

    The first ``free`` failures cost nothing; then each attempt waits 5 s after the previous one,
    doubling per further failure up to 60 s (the first wait is long enough that the attempt right after
    the free ones is refused even when a busy server takes a second per password check). A back-off, not a lock-out: whoever hammers the account
    cannot keep its owner out for longer than that delay, and denied attempts do not grow it."""
    if now - last_at > ACCOUNT_WINDOW:
        failures = 0
    if failures < free:
        return 0.0, failures
    delay = min(ACCOUNT_FIRST_DELAY * 2.0 ** (failures - free), ACCOUNT_MAX_DELAY)
    return max(0.0, last_at + delay - now), failures


def address_wait(count: int, started_at: float, now: float, limit: int) -> tuple[float, int, float]:
    """(seconds to wait, attempts counted, window start) for one client address: at most ``limit``
    attempts per 60 s window."""
    if now - started_at >= ADDRESS_WINDOW:
        count, started_at = 0, now
    if count >= limit:
        return started_at + ADDRESS_WINDOW - now, count, started_at
    return 0.0, count, started_at
