"""The service layer: every action of the feedback app as one short transaction.

``Store`` holds a sessionmaker and the project; each method takes the acting user (``Actor``)
explicitly and returns plain dataclasses. The REST handlers (``api.py``) and the reviewer pages call
these same methods, so the rules live here once:

* each item reaches ``reviewers_per_item`` reviewers; a reviewer never gets an item twice;
* an item's open slot is held by a lease (``lease_seconds``); a walked-away reviewer's lease expires
  and the slot returns; two reviewers never hold the same slot (unique constraint, not a lock);
* a submission carries an idempotency key: a retry returns the ranking already stored;
* a reviewer can undo or edit their own rankings, and can never act as, or read, another reviewer.

Errors are ``ServiceError`` (a ``UserError``) with an HTTP status; nothing is stored when one is raised.
"""

from __future__ import annotations

import asyncio
import math
import queue
import random
import re
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from feedback_app import auth
from feedback_app.db import open_store, read_only, relaxed_durability
from feedback_app.auth import Actor
from feedback_app.models import (DONE, FLAG_KINDS, LEASED, ROLES, SKIPPED, AbJudgement, Assignment, AuditEntry,
                                 Candidate, Demonstration, Flag, GoldItem, Item, LoginThrottle, Project, PromptRow, RankingRow,
                                 User)
from rlhf.errors import UserError
from rlhf.schema import prompt_key, validate_prompt, validate_ranks

T = TypeVar("T")


class _Hot:
    """The statements of the two hot paths (hand-out and submit), built once with bound parameters.

    Core statements on the session's connection, not ORM objects, and not rebuilt per call: building
    a statement and its cache key, and loading ORM objects, were most of the CPU per request, and the
    one SQLite writer thread is what many reviewers wait on."""

    A, I, C, P, R = (Assignment.__table__.c, Item.__table__.c, Candidate.__table__.c, PromptRow.__table__.c,
                     RankingRow.__table__.c)
    held = (select(A.item_id, A.shown_order, A.expires_at)
            .where(A.user_id == bindparam("uid"), A.state == LEASED, A.expires_at > bindparam("now"))
            .order_by(A.id).limit(1))
    sweep = delete(Assignment).where(A.state == LEASED, A.expires_at <= bindparam("now"))
    # The first item with an open slot that this reviewer was never handed: highest priority first
    # (`rlhf app prioritise`; 0 until then), then oldest first, so items complete before new ones start.
    # It walks ix_items_hand_out and stops at the first match. Correlated count: cheap with the item index.
    _filled = (select(func.count(A.id)).where(A.item_id == I.id, A.slot.is_not(None))
               .correlate(Item.__table__).scalar_subquery())
    _gold_ids = select(GoldItem.__table__.c.item_id)
    pick = (select(I.id).where(I.project_id == bindparam("pid"),
                               I.id.not_in(select(A.item_id).where(A.user_id == bindparam("uid"))),
                               I.id.not_in(_gold_ids), _filled < bindparam("rpi"))
            .order_by(I.priority.desc(), I.id).limit(1))
    # Gold: any gold item of the project this reviewer was never handed, whatever reviewers_per_item
    # says (its leases hold no slot), in random order so reviewers cannot learn which come when.
    pick_gold = (select(I.id).where(I.project_id == bindparam("pid"), I.id.in_(_gold_ids),
                                    I.id.not_in(select(A.item_id).where(A.user_id == bindparam("uid"))))
                 .order_by(func.random()).limit(1))
    handed_counts = (select(func.count(A.id), func.count(A.id).filter(A.item_id.in_(_gold_ids)))
                     .where(A.user_id == bindparam("uid")))
    _p = Project.__table__.c
    settings = select(_p.k, _p.reviewers_per_item, _p.guideline, _p.guideline_version, _p.lease_seconds,
                      _p.gold_rate).where(_p.id == bindparam("pid"))
    used_slots = select(A.slot).where(A.item_id == bindparam("item"), A.slot.is_not(None))
    add_lease = Assignment.__table__.insert()
    view = (select(C.position, C.id, C.text, C.sampling, I.round, P.prompt).join(Item.__table__, I.id == C.item_id)
            .join(PromptRow.__table__, P.id == I.prompt_id).where(C.item_id == bindparam("item")))
    _stored = (R.id, R.item_id, R.ranks, R.shown_order, R.simulated, R.created_at, R.idempotency_key)
    stored_by_key = select(*_stored).where(R.user_id == bindparam("uid"), R.idempotency_key == bindparam("key"))
    stored_by_lease = select(*_stored).where(R.assignment_id == bindparam("aid"))
    lease = (select(A.id, A.state, A.shown_order, A.expires_at)
             .where(A.item_id == bindparam("item"), A.user_id == bindparam("uid")))
    close_lease = update(Assignment).where(A.id == bindparam("aid")).values(state=DONE, expires_at=None)
    add_ranking = RankingRow.__table__.insert()
    candidate_ids = select(C.position, C.id).where(C.item_id == bindparam("item"))
    U = User.__table__.c
    account = select(U.username, U.role, U.active, U.session_version).where(U.id == bindparam("uid"))


class ServiceError(UserError):
    status = 400


class Invalid(ServiceError):
    status = 422


class NotFound(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403


class Conflict(ServiceError):
    status = 409


class LeaseExpired(ServiceError):
    status = 410


class BadLogin(ServiceError):
    status = 401


class TooManyLogins(ServiceError):
    status = 429

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------------
# What the service returns


@dataclass
class CandidateView:
    id: int
    text: str
    # How generation ended ("stop", or "length" when cut at the token limit) and its new tokens, so a
    # page can mark a cut reply; None for imported replies.
    finish_reason: str | None = None
    new_tokens: int | None = None


def _candidate_view(row) -> CandidateView:
    """A candidate row of ``_Hot.view`` (id, text and the generation's ``sampling`` record)."""
    end = row.sampling if isinstance(row.sampling, dict) else {}
    tokens = end.get("new_tokens")
    return CandidateView(row.id, row.text, end.get("finish_reason"), tokens if isinstance(tokens, int) else None)


@dataclass
class ItemView:
    """An item as handed to its reviewer: candidates in the shuffled order this reviewer sees."""

    item_id: int
    prompt: Any
    candidates: list[CandidateView]
    round: int
    guideline: str
    guideline_version: str
    lease_expires_at: float | None


@dataclass
class RankingView:
    ranking_id: int
    item_id: int
    ranks: list[int]  # in the order the reviewer saw the candidates
    candidate_ids: list[int]  # same order
    simulated: bool
    created_at: float
    replayed: bool = False  # True when an idempotent retry found the stored ranking


@dataclass
class Progress:
    ranked: int
    skipped: int
    leased: int
    available: int  # items this reviewer could still be handed now
    totals: dict[str, int] = field(default_factory=dict)  # admin only: project-wide counts


@dataclass
class AccountInfo:
    username: str
    role: str
    active: bool
    created_at: float


@dataclass
class AuditView:
    at: float
    actor: str  # the admin's username, or "cli"
    action: str  # account created | role changed | account disabled | account enabled | password reset | ...
    target: str
    detail: dict
    id: int | None = None  # the entry's id (an export's manifest cites it as audit_id)


@dataclass
class ImportRow:
    """One prompt to import; ``replies`` (exactly K) become a ready item of ``round``."""

    prompt: Any
    replies: list[str] | None = None
    model: str = ""
    source: str = ""
    # from a chat log (feedback_app.chatlog): the agent's reply that followed, already redacted, and
    # the raw conversation id and customer identifier, stored only as salted hashes (conversation_key)
    reference: str | None = None
    conversation: str = ""
    customer: str = ""
    gold_ranks: list[int] | None = None  # a known ranking of ``replies`` (by reply, 1 best): a gold item


# The model name of a candidate that is the contact-centre agent's real reply (``rlhf app generate
# --agent-reply-as-candidate``): the dashboard compares it with the policy's, exports mark it.
AGENT_MODEL = "agent"


def conversation_key(salt: str, identifier: str) -> str:
    """The salted hash a conversation id or customer identifier is stored as (sha256 hex)."""
    import hashlib

    return hashlib.sha256(f"{salt}:{identifier.strip()}".encode()).hexdigest()


def _project_salt(s: Session, project_id: int) -> str:
    """The project's hash salt, made on first use (projects made before revision 0005 got one there)."""
    import secrets

    project = s.get(Project, project_id)
    if not project.redaction_salt:
        project.redaction_salt = secrets.token_hex(16)
    return project.redaction_salt


# ---------------------------------------------------------------------------------------------------


class Store:
    """The feedback app's data operations for one project."""

    def __init__(self, sessions: sessionmaker[Session], project: str = "default", k: int = 4,
                 reviewers_per_item: int = 1, guideline: str = "", guideline_version: str = "1",
                 lease_seconds: float = 900.0, clock: Callable[[], float] = time.time, create: bool = True,
                 session_check_seconds: float = 2.0, login_free_failures: int = 10, login_per_address: int = 60):
        self.sessions = sessions
        # SQLite allows one writer. Within this process, threads queue on a lock instead of on
        # SQLite's busy handler, which sleeps and polls and gave multi-second tails under 50
        # concurrent reviewers. Other processes (a CLI import while the app runs) still wait on
        # the busy timeout.
        engine = sessions.kw.get("bind")
        self._write_lock = threading.Lock() if engine is not None and engine.dialect.name == "sqlite" else nullcontext()
        self._group = GroupCommit(sessions, self._write_lock) if engine is not None and \
            engine.dialect.name == "sqlite" else None
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._next_sweep = float("-inf")  # when expired leases are next deleted (at most once a second)
        self._next_settings_read = float("-inf")  # when the hand-out next re-reads the project's settings
        # Accounts' current role and session version, for checking login tokens (auth.SessionCheck).
        self.accounts = auth.SessionCheck(self._account_state, session_check_seconds,
                                          spread=lambda: random.uniform(0.5, 1.0))
        self.login_free_failures, self.login_per_address = login_free_failures, login_per_address
        self._next_throttle_sweep = float("-inf")
        self.project = (self._ensure_project(project, k, reviewers_per_item, guideline, guideline_version) if create
                        else self._existing_project(project))
        if self.project.lease_seconds:  # set from the admin page: the project's own lease time wins
            self.lease_seconds = self.project.lease_seconds

    @classmethod
    def from_config(cls, sessions: sessionmaker[Session], config, create: bool = True) -> "Store":
        """The store of ``config.project``. With ``create`` the project is made if missing and takes the
        config's settings; without, it must exist and keeps its stored settings."""
        return cls(sessions, config.project, config.k, config.reviewers_per_item, config.guideline,
                   config.guideline_version, config.lease_seconds, create=create,
                   session_check_seconds=config.session_check_seconds,
                   login_free_failures=config.login_attempts_per_minute,
                   login_per_address=config.login_attempts_per_address)

    @classmethod
    def open(cls, config, create: bool = True) -> "Store":
        """The store of an ``AppConfig``: its database opened (and migrated to head), then its project
        (``from_config``). The one way the server and the CLI build it. Only commands that set a store
        up (``create``) may create a missing SQLite file or project; the others refuse a missing one,
        so a forgotten ``--config`` does not quietly work on a new, empty database."""
        _, sessions = open_store(config.database_url, config.busy_timeout_ms, create=create)
        return cls.from_config(sessions, config, create=create)

    # -- for services built on the store (the A/B evaluation) ------------------------------------

    def transaction(self, work: Callable[[Session], T], attempts: int = 5) -> T:
        """Run ``work(session)`` in one short write transaction, retried when a concurrent writer won
        a unique constraint: the same runner, lock and retries as the store's own writes."""
        return self._run(work, attempts=attempts)

    def now(self) -> float:
        """The store's clock (UNIX seconds; a test may pass its own clock to ``Store``)."""
        return self.clock()

    def lease_expires_at(self, handed_out_at: float) -> float:
        """The one lease rule, for ranking and A/B leases alike: a lease handed out at ``handed_out_at``
        holds for ``lease_seconds`` and is expired from then on (see ``lease_expired``)."""
        return handed_out_at + self.lease_seconds

    @staticmethod
    def lease_expired(expires_at: float | None, now: float) -> bool:
        """True once ``now`` reaches ``expires_at`` (None: the lease was closed or never held)."""
        return expires_at is None or expires_at <= now

    # -- transactions -----------------------------------------------------------------------------

    def _run(self, work: Callable[[Session], T], attempts: int = 5, durable: bool = True) -> T:
        """Run ``work`` in one transaction; retry when a concurrent writer won a unique constraint
        (PostgreSQL, where there is no BEGIN IMMEDIATE) or SQLite stayed busy past its timeout."""
        for attempt in range(attempts):
            try:
                with (nullcontext() if durable else relaxed_durability()), self._write_lock, \
                        self.sessions() as session, session.begin():
                    return work(session)
            except (IntegrityError, OperationalError) as exc:
                if attempt == attempts - 1 or not _retryable(exc):
                    raise
                time.sleep(0.005 * (attempt + 1) * random.random())
        raise AssertionError("unreachable")

    def _call(self, work: Callable[[Session], T], durable: bool = True) -> T:
        """Like ``_run``, but on SQLite shares one transaction (one fsync) with concurrent callers."""
        if self._group is None:
            return self._run(work, attempts=10, durable=durable)
        return self._group.submit(work, durable).result()

    async def _call_async(self, work: Callable[[Session], T], durable: bool = True) -> T:
        """``_call`` for the event loop: on SQLite it awaits the group-commit thread (no worker thread
        per request, so 50 reviewers do not mean 50 threads fighting over one lock); elsewhere it
        runs ``_run`` in the server's thread pool."""
        if self._group is None:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(partial(self._run, work, 10, durable))
        return await asyncio.wrap_future(self._group.submit(work, durable))

    def _ensure_project(self, name, k, reviewers_per_item, guideline, guideline_version) -> Project:
        def work(s: Session) -> Project:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                project = Project(name=name, k=k, reviewers_per_item=reviewers_per_item, guideline=guideline,
                                  guideline_version=guideline_version, created_at=self.clock())
                s.add(project)
                s.flush()
                return project
            if project.settings_version > 0:
                # Settings edited from the admin page or ``rlhf app settings`` are the project's own now:
                # a restart with the config's older values must not undo them (nor a K change).
                return project
            if project.k != k:
                has_items = s.scalar(select(func.count(Item.id)).where(Item.project_id == project.id))
                if has_items:
                    raise UserError(f"k: project '{name}' already holds items with K={project.k}; "
                                    f"use another project for K={k}")
                project.k = k
            project.reviewers_per_item = reviewers_per_item
            project.guideline, project.guideline_version = guideline, guideline_version
            return project

        return self._run(work)

    def _existing_project(self, name: str) -> Project:
        with self.sessions() as s:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                known = ", ".join(s.scalars(select(Project.name).order_by(Project.id))) or "none"
                raise UserError(f"project: no project '{name}' in this database (projects: {known}); "
                                f"choose one with --project NAME")
            return project

    def refresh_project(self) -> Project:
        """Re-read the project's settings: another process (a CLI import) may have changed K since."""
        with self.sessions() as s:
            self.project = s.get(Project, self.project.id)
        if self.project.lease_seconds:
            self.lease_seconds = self.project.lease_seconds
        return self.project

    # -- project settings (admin page's Project tab, ``rlhf app settings``) ---------------------------

    SETTINGS = ("guideline", "k", "reviewers_per_item", "lease_seconds", "gold_rate", "gold_threshold",
                "agreement_threshold")

    def update_settings(self, changes: dict[str, Any], by: Actor | None = None) -> dict[str, Any]:
        """Change some of the project's ``SETTINGS``; returns ``{name: [before, after]}`` of what changed.

        Every change bumps ``settings_version`` and is audited ("settings changed"); a new guideline
        also bumps ``guideline_version`` (each ranking records the version it was made under). K
        follows the rule of server start: refused while an item of the old K still waits for
        rankings (skip those items or let them finish first)."""
        unknown = set(changes) - set(self.SETTINGS)
        if unknown:
            raise Invalid(f"{sorted(unknown)[0]}: not a project setting (settings: {', '.join(self.SETTINGS)})")
        checks = {"k": (int, 2, 6), "reviewers_per_item": (int, 1, 50), "lease_seconds": (float, 30, 7 * 86400),
                  "gold_rate": (float, 0, 0.5), "gold_threshold": (float, 0, 1), "agreement_threshold": (float, 0, 1)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "guideline":
                if not isinstance(value, str) or len(value) > 20000:
                    raise Invalid("guideline: give a text of at most 20000 characters")
                clean[name] = value.strip()
                continue
            kind, low, high = checks[name]
            try:
                number = kind(value)
            except (TypeError, ValueError):
                raise Invalid(f"{name}: must be a number (got {value!r})") from None
            if isinstance(value, bool) or not (low <= number <= high) or (kind is int and number != value):
                raise Invalid(f"{name}: must be {'a whole number ' if kind is int else ''}between {low} and {high} "
                              f"(got {value!r})")
            clean[name] = number

        def work(s: Session) -> dict[str, Any]:
            project = s.get(Project, self.project.id)
            before = {name: getattr(project, name) for name in clean}
            if "lease_seconds" in clean and project.lease_seconds is None:
                before["lease_seconds"] = self.lease_seconds  # the config's, until the project has its own
            # A guideline differing only by surrounding blanks (a YAML block's last newline) is the same one.
            changed = {n: [before[n], v] for n, v in clean.items()
                       if ((before[n] or "").strip() != v if n == "guideline" else before[n] != v)}
            if not changed:
                return {}
            if "k" in changed:
                self._check_k_change(s, project, clean["k"])
            for name, (_, after) in changed.items():
                setattr(project, name, after)
            if "guideline" in changed:
                changed["guideline_version"] = [project.guideline_version, _next_version(project.guideline_version)]
                project.guideline_version = changed["guideline_version"][1]
            project.settings_version += 1
            _audit(s, by, self.clock(), "settings changed", project.name,
                   {"settings_version": project.settings_version, **changed})
            return changed

        changed = self._run(work)
        self.refresh_project()
        return changed

    def _check_k_change(self, s: Session, project: Project, k: int) -> None:
        """Refuse a new K while an item of another K still waits for rankings (not gold, not full)."""
        done = (select(func.count(Assignment.id)).where(Assignment.item_id == Item.id, Assignment.state == DONE)
                .correlate(Item).scalar_subquery())
        replies = (select(func.count(Candidate.id)).where(Candidate.item_id == Item.id)
                   .correlate(Item).scalar_subquery())
        open_items = s.scalar(select(func.count(Item.id)).where(
            Item.project_id == project.id, Item.id.not_in(select(GoldItem.item_id)), replies != k,
            done < project.reviewers_per_item)) or 0
        if open_items:
            raise Conflict(f"k: {open_items} items with K={project.k} still wait for rankings; finish them (or use "
                           f"another project) before changing K to {k}")

    # -- gold items -------------------------------------------------------------------------------

    def mark_gold(self, item_id: int, ranks: list[int], by: Actor | None = None) -> None:
        """Mark an item as gold with its known ranking (ranks by reply position, 1 best); marking it
        again replaces the ranking. Audited."""
        from feedback_app.gold import pair_score

        def work(s: Session) -> None:
            item = s.get(Item, item_id)
            if item is None or item.project_id != self.project.id:
                raise NotFound(f"item {item_id}: no such item in project '{self.project.name}'")
            known = _check_ranks(ranks, len(item.candidates))
            if pair_score(known, known)[1] == 0:
                raise Invalid("ranks: a gold ranking that ties every reply says nothing; rank at least one reply "
                              "above another")
            _set_gold(s, item_id, known, by.username if by is not None else "cli", self.clock())
            _audit(s, by, self.clock(), "gold marked", f"item {item_id}", {"ranks": known})

        self._run(work)

    def unmark_gold(self, item_id: int, by: Actor | None = None) -> None:
        def work(s: Session) -> None:
            row = s.get(GoldItem, item_id)
            if row is None:
                raise NotFound(f"item {item_id}: not a gold item")
            s.delete(row)
            _audit(s, by, self.clock(), "gold unmarked", f"item {item_id}", {})

        self._run(work)

    def item_replies(self, item_id: int) -> list[str]:
        """An item's reply texts in stored order (reply 1 first), for marking gold; admins only."""
        with self.sessions() as s:
            item = s.get(Item, item_id)
            if item is None or item.project_id != self.project.id:
                raise NotFound(f"item {item_id}: no such item in project '{self.project.name}'")
            return [c.text for c in item.candidates]

    def gold_items(self) -> dict[int, list[int]]:
        """The project's gold items: item id -> known ranks by reply position."""
        with self.sessions() as s:
            rows = s.execute(select(GoldItem.item_id, GoldItem.ranks).join(Item, Item.id == GoldItem.item_id)
                             .where(Item.project_id == self.project.id).order_by(GoldItem.item_id)).all()
        return {item_id: list(ranks) for item_id, ranks in rows}

    # -- users ------------------------------------------------------------------------------------
    # Accounts are created, reset and disabled here only (CLI, REST API and admin page call these);
    # each change ends the account's sessions (``session_version``), forgets this process's cached
    # state of it (``self.accounts``), and is written to the audit log in the same transaction.

    def add_user(self, username: str, password: str, role: str = "reviewer", replace: bool = False,
                 by: Actor | None = None) -> Actor:
        """Create an account, or with ``replace`` reset its password and role (and enable it again).
        ``by``: the admin doing it, for the audit log (None: the command line)."""
        try:
            name = auth.normalize_username(username)
            key = auth.username_key(name)
            auth.check_password(password, name)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if role not in ROLES:
            raise Invalid(f"role: must be one of {', '.join(ROLES)} (got {role!r})")
        hashed = auth.hash_password(password)

        def work(s: Session) -> Actor:
            user = s.scalar(select(User).where(User.username_key == key))
            if user is not None and not replace:
                raise Conflict(f"user '{user.username}' already exists (use --replace to reset the password and role)")
            if user is None:
                user = User(username=name, username_key=key, created_at=self.clock(), session_version=0)
                s.add(user)
                _audit(s, by, self.clock(), "account created", name, {"role": role})
            else:
                _audit(s, by, self.clock(), "password reset", user.username, {})
                if user.role != role:
                    _audit(s, by, self.clock(), "role changed", user.username, {"from": user.role, "to": role})
                if not user.active:
                    _audit(s, by, self.clock(), "account enabled", user.username, {})
                user.session_version += 1
            user.password_hash, user.role, user.active = hashed, role, True
            s.flush()
            return Actor(user.id, user.username, user.role)

        actor = self._run(work)
        self.accounts.forget(actor.id)
        return actor

    def disable_user(self, username: str, by: Actor | None = None) -> Actor:
        """Disable an account: its sessions end, its leases (ranking and A/B) go back to the pool, its
        rankings stay. ``add_user(..., replace=True)`` enables it again."""
        try:
            key = auth.username_key(username)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

        def work(s: Session) -> Actor:
            user = s.scalar(select(User).where(User.username_key == key))
            if user is None:
                raise NotFound(f"user '{username}': no such account")
            if by is not None and by.id == user.id:
                raise Forbidden("you cannot disable your own account")
            if user.active:
                freed = s.execute(delete(Assignment).where(Assignment.user_id == user.id,
                                                           Assignment.state == LEASED)).rowcount
                freed_ab = s.execute(delete(AbJudgement).where(AbJudgement.user_id == user.id,
                                                               AbJudgement.verdict.is_(None))).rowcount
                user.active, user.session_version = False, user.session_version + 1
                _audit(s, by, self.clock(), "account disabled", user.username,
                       {"leases_freed": freed, "ab_leases_freed": freed_ab})
            return Actor(user.id, user.username, user.role)

        actor = self._run(work)
        self.accounts.forget(actor.id)
        return actor

    def logout(self, actor: Actor) -> None:
        """End every session of ``actor``'s account (all its tokens, on every device)."""
        def work(s: Session) -> None:
            s.execute(update(User).where(User.id == actor.id).values(session_version=User.session_version + 1))

        self._run(work)
        self.accounts.forget(actor.id)

    def list_users(self) -> list[Actor]:
        with self.sessions() as s:
            return [Actor(u.id, u.username, u.role) for u in s.scalars(select(User).order_by(User.id))]

    def accounts_table(self) -> list[AccountInfo]:
        """Every account with its role and state, oldest first (admin page, REST API, CLI)."""
        with self.sessions() as s:
            return [AccountInfo(u.username, u.role, bool(u.active), u.created_at)
                    for u in s.scalars(select(User).order_by(User.id))]

    def _account_state(self, user_id: int) -> auth.AccountState | None:
        """One account's role, active flag and session version, read without taking the write lock."""
        with read_only(), self.sessions() as s:
            row = s.execute(_Hot.account, {"uid": user_id}).first()
        return None if row is None else auth.AccountState(row.username, row.role, bool(row.active),
                                                           row.session_version)

    def authenticate(self, username: str, password: str) -> Actor:
        """The account for ``username`` if ``password`` is right; ``BadLogin`` otherwise (same message
        whether the user exists or not). No throttle here: logins go through ``login``."""
        try:
            key = auth.username_key(username)
        except ValueError:
            key = None  # a name no account can have: checked against the dummy hash all the same
        if not isinstance(password, str) or len(password) > auth.MAX_PASSWORD:
            password = ""
        with read_only(), self.sessions() as s:
            user = s.scalar(select(User).where(User.username_key == key)) if key else None
            stored = user.password_hash if user is not None and user.active else auth.DUMMY_HASH
        if not auth.verify_password(stored, password) or user is None or not user.active:
            raise BadLogin("wrong username or password")
        if auth.needs_rehash(stored):
            def rehash(s: Session) -> None:
                s.get(User, user.id).password_hash = auth.hash_password(password)
            self._run(rehash)
        return Actor(user.id, user.username, user.role)

    def login(self, username: str, password: str, client: str) -> Actor:
        """``authenticate`` behind the login throttle: ``TooManyLogins`` (429) when the account is
        backing off or the client address used its attempts for this minute.

        The attempt is counted in the database BEFORE the password is checked, in one transaction
        (SQLite's write lock, PostgreSQL's row locks), so simultaneous attempts and other server
        processes see each other's counts. A success gives its own attempt back; it does not wipe
        the failures others made."""
        try:
            account = "account:" + auth.username_key(username)
        except ValueError:
            account = "account:?" + str(username)[:100]
        keys = (account[:200], "address:" + (client or "?")[:150])
        wait = self._run(partial(self._count_login, keys), durable=False)
        if wait > 0:
            raise TooManyLogins(f"too many failed logins for '{str(username)[:100]}'; retry in {math.ceil(wait)} s",
                                retry_after=wait)
        actor = self.authenticate(username, password)
        self._run(partial(self._refund_login, keys), durable=False)
        # The token about to be issued carries the version the database holds now, not a cached one
        # another process may have moved on from.
        self.accounts.forget(actor.id)
        return actor

    def _throttle_rows(self, s: Session, keys: tuple[str, str], now: float) -> dict[str, LoginThrottle]:
        """The throttle rows of ``keys``, created if missing, locked until the transaction ends."""
        dialect = s.get_bind().dialect.name
        rows = [{"key": k, "count": 0, "started_at": now, "last_at": now} for k in keys]
        if dialect in ("sqlite", "postgresql"):
            insert = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"]).insert
            s.execute(insert(LoginThrottle).values(rows).on_conflict_do_nothing(index_elements=["key"]))
        else:
            for row in rows:
                if s.get(LoginThrottle, row["key"]) is None:
                    with s.begin_nested():
                        s.add(LoginThrottle(**row))
        found = s.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys)).order_by(LoginThrottle.key)
                          .with_for_update().execution_options(populate_existing=True))
        return {row.key: row for row in found}

    def _count_login(self, keys: tuple[str, str], s: Session) -> float:
        now = self.clock()
        if now >= self._next_throttle_sweep:  # counters idle for a day are gone for good
            s.execute(delete(LoginThrottle).where(LoginThrottle.last_at < now - 86400))
            self._next_throttle_sweep = now + 3600
        rows = self._throttle_rows(s, keys, now)
        account, address = rows[keys[0]], rows[keys[1]]
        wait_account, failures = auth.account_wait(account.count, account.last_at, now, self.login_free_failures)
        wait_address, count, started = auth.address_wait(address.count, address.started_at, now,
                                                         self.login_per_address)
        if wait_account > 0 or wait_address > 0:
            return max(wait_account, wait_address)
        account.count, account.last_at = failures + 1, now  # counted as a failure until proven otherwise
        address.count, address.started_at, address.last_at = count + 1, started, now
        return 0.0

    def _refund_login(self, keys: tuple[str, str], s: Session) -> None:
        for row in self._throttle_rows(s, keys, self.clock()).values():
            row.count = max(0, row.count - 1)

    # -- audit log --------------------------------------------------------------------------------

    def audit(self, by: Actor | None, action: str, target: str = "", detail: dict | None = None) -> int:
        """Record an admin action done outside the store's own transactions (an export, a generation);
        returns the entry's id (an export's manifest cites it)."""
        def work(s: Session) -> int:
            entry = _audit(s, by, self.clock(), action, target, detail or {})
            s.flush()
            return entry.id

        return self._run(work)

    def set_priorities(self, priorities: dict[int, float], action: str, detail: dict | None = None,
                       by: Actor | None = None) -> None:
        """Set items' hand-out priority (higher first; ``rlhf app prioritise``) in one audited transaction.
        Items of another project are left alone."""
        def work(s: Session) -> None:
            if priorities:
                t = Item.__table__.c
                s.execute(update(Item.__table__).where(t.id == bindparam("item_id"), t.project_id == self.project.id)
                          .values(priority=bindparam("value")),
                          [{"item_id": i, "value": v} for i, v in priorities.items()])
            _audit(s, by, self.clock(), action, self.project.name, detail or {})

        self._run(work)

    def set_redaction(self, settings: dict, by: Actor | None = None) -> None:
        """Record the project's redaction settings (``RedactionSettings`` as a dict); a change is
        audited, turning redaction off or on under its own action name so the trail shows it."""
        def work(s: Session) -> None:
            project = s.get(Project, self.project.id)
            _project_salt(s, project.id)
            before = project.redaction
            if before == settings:
                return
            project.redaction = settings
            was_on, now_on = (before or {}).get("enabled", True), settings.get("enabled", True)
            action = ("redaction off" if was_on and not now_on else "redaction on" if now_on and not was_on
                      else "redaction settings")
            _audit(s, by, self.clock(), action, project.name, {"before": before, "after": settings})

        self._run(work)

    def audit_log(self, limit: int = 200) -> list[AuditView]:
        """The latest admin actions, newest first."""
        with self.sessions() as s:
            rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
            return [AuditView(r.at, r.actor, r.action, r.target, r.detail or {}, r.id) for r in rows]

    # -- prompts and items ------------------------------------------------------------------------

    def erase(self, conversation: str | None = None, customer: str | None = None,
              by: Actor | None = None) -> dict:
        """Delete every prompt of one chat-log conversation or one customer identifier, with their
        items, candidates, assignments, rankings and flags (foreign keys cascade), in one transaction,
        and audit it (under the salted hash: the raw identifier is personal data). Returns the counts
        and the ids of the deleted rankings (to find the earlier exports that held them)."""
        if bool(conversation) == bool(customer):
            raise Invalid("erase: give one conversation id (--conversation) or one customer identifier "
                          "(--customer)")

        def work(s: Session) -> dict:
            salt = _project_salt(s, self.project.id)
            column = PromptRow.conversation_key if conversation else PromptRow.customer_key
            key = conversation_key(salt, conversation or customer)
            prompt_ids = list(s.scalars(select(PromptRow.id).where(PromptRow.project_id == self.project.id,
                                                                   column == key)))
            if not prompt_ids:
                what = f"conversation {conversation!r}" if conversation else f"customer {customer!r}"
                raise NotFound(f"erase: no prompts of {what} in project '{self.project.name}' (ids are matched "
                               f"exactly, as imported)")
            item_ids = list(s.scalars(select(Item.id).where(Item.prompt_id.in_(prompt_ids))))
            ranking_ids = sorted(s.scalars(select(RankingRow.id).where(RankingRow.item_id.in_(item_ids))))
            # reviewers' demonstrations of these prompts go too (their foreign key cascades)
            demonstration_ids = sorted(s.scalars(select(Demonstration.id)
                                                 .where(Demonstration.prompt_id.in_(prompt_ids))))
            result = {"prompts": len(prompt_ids), "items": len(item_ids), "rankings": len(ranking_ids),
                      "demonstrations": len(demonstration_ids), "ranking_ids": ranking_ids,
                      "demonstration_ids": demonstration_ids}
            if s.get_bind().dialect.name == "sqlite":  # overwrite the freed pages, not only unlink them
                s.connection().exec_driver_sql("PRAGMA secure_delete=ON")
            s.execute(delete(PromptRow).where(PromptRow.id.in_(prompt_ids)))
            target = f"{'conversation' if conversation else 'customer'} {key[:16]}"
            _audit(s, by, self.clock(), "erase", target,
                   {k: v for k, v in result.items() if not k.endswith("_ids")} | {"key": key})
            return result

        return self._run(work)

    def texts_for_redaction(self) -> list[dict]:
        """Every prompt of the project with its reference reply and its candidates' texts (by id),
        for redacting a store written before redaction existed (``feedback_app.backfill``)."""
        with self.sessions() as s:
            prompts = s.execute(select(PromptRow.id, PromptRow.prompt, PromptRow.reference_reply)
                                .where(PromptRow.project_id == self.project.id).order_by(PromptRow.id)).all()
            candidates = s.execute(select(Item.prompt_id, Candidate.id, Candidate.text).join(Item, Candidate.item_id
                                                                                             == Item.id)
                                   .where(Item.project_id == self.project.id).order_by(Candidate.id)).all()
        by_prompt: dict[int, list] = {}
        for prompt_id, candidate_id, text in candidates:
            by_prompt.setdefault(prompt_id, []).append((candidate_id, text))
        return [{"id": pid, "prompt": prompt, "reference": ref, "candidates": by_prompt.get(pid, [])}
                for pid, prompt, ref in prompts]

    def rewrite_texts(self, prompts: dict[int, tuple[Any, str | None]], candidates: dict[int, str],
                      by: Actor | None = None, detail: dict | None = None) -> dict[str, int]:
        """Replace prompts (text or messages, reference reply) and candidate texts in one transaction,
        recomputing each prompt's key; a prompt whose new text equals another prompt's keeps its old
        key (the two stay apart). Audited as "redaction backfill" with ``detail``."""
        def work(s: Session) -> dict[str, int]:
            kept_keys = 0
            for pid, (prompt, reference) in prompts.items():
                row = s.get(PromptRow, pid)
                key = prompt_key(prompt)
                clash = s.scalar(select(PromptRow.id).where(PromptRow.project_id == row.project_id,
                                                            PromptRow.prompt_key == key, PromptRow.id != pid))
                if clash is None:
                    row.prompt_key = key
                else:
                    kept_keys += 1
                row.prompt, row.reference_reply = prompt, reference
            for cid, text in candidates.items():
                s.get(Candidate, cid).text = text
            counts = {"prompts_changed": len(prompts), "candidates_changed": len(candidates),
                      "prompt_keys_kept": kept_keys}
            _audit(s, by, self.clock(), "redaction backfill", self.project.name, {**counts, **(detail or {})})
            return counts

        return self._run(work)

    def import_rows(self, rows: Iterable[ImportRow], round: int = 0, by: Actor | None = None) -> dict[str, int]:
        """Add prompts (a prompt already in the project is kept once) and, for rows with replies,
        their item of ``round``. All rows in one transaction: a bad row stores nothing. The import is
        written to the audit log as done by ``by`` (None: the command line)."""
        rows = list(rows)
        k = self.refresh_project().k
        for i, row in enumerate(rows):
            try:
                validate_prompt(row.prompt)
            except ValueError as exc:
                raise Invalid(f"{row.source or f'row {i + 1}'}: {exc}") from None
            if row.replies is not None and (len(row.replies) != k or not all(isinstance(r, str) for r in row.replies)):
                raise Invalid(f"{row.source or f'row {i + 1}'}: replies must be a list of exactly K={k} texts "
                              f"(got {len(row.replies) if isinstance(row.replies, list) else type(row.replies).__name__})")
            if row.gold_ranks is not None:
                if row.replies is None:
                    raise Invalid(f"{row.source or f'row {i + 1}'}: gold_ranking needs the replies it ranks")
                try:
                    known = validate_ranks(row.gold_ranks, k)
                except ValueError as exc:
                    raise Invalid(f"{row.source or f'row {i + 1}'}: gold_ranking: {exc}") from None
                if len(set(known)) < 2:
                    raise Invalid(f"{row.source or f'row {i + 1}'}: gold_ranking ties every reply; rank at least "
                                  f"one above another")

        def work(s: Session) -> dict[str, int]:
            counts = {"prompts_added": 0, "prompts_existing": 0, "items_added": 0, "items_existing": 0}
            salt = _project_salt(s, self.project.id)
            for row in rows:
                prompt = self._get_or_add_prompt(s, row.prompt, row.source, counts)
                if row.reference is not None and prompt.reference_reply is None:
                    prompt.reference_reply = row.reference
                if row.conversation:
                    prompt.conversation_key = conversation_key(salt, row.conversation)
                if row.customer:
                    prompt.customer_key = conversation_key(salt, row.customer)
                if row.replies is not None:
                    added = self._add_item(s, prompt.id, round, row.replies, row.model, "", {})
                    counts["items_added" if added else "items_existing"] += 1
                    if row.gold_ranks is not None:
                        item_id = s.scalar(select(Item.id).where(Item.prompt_id == prompt.id, Item.round == round))
                        _set_gold(s, item_id, row.gold_ranks, by.username if by is not None else "import",
                                  self.clock())
                        counts["gold"] = counts.get("gold", 0) + 1
            # Rows' sources read "FILE:LINE" (or "FILE line N"): the audit names the file.
            source = re.sub(r"(:| line )\d+$", "", rows[0].source) if rows else ""
            _audit(s, by, self.clock(), "import", source, {"round": round, **counts})
            return counts

        return self._run(work)

    def _get_or_add_prompt(self, s: Session, prompt: Any, source: str, counts: dict) -> PromptRow:
        key = prompt_key(prompt)
        row = s.scalar(select(PromptRow).where(PromptRow.project_id == self.project.id, PromptRow.prompt_key == key))
        if row is None:
            row = PromptRow(project_id=self.project.id, prompt=prompt, prompt_key=key, source=source[:500],
                            created_at=self.clock())
            s.add(row)
            s.flush()
            counts["prompts_added"] += 1
        else:
            counts["prompts_existing"] += 1
        return row

    def _add_item(self, s: Session, prompt_id: int, round: int, replies: list[str], model: str,
                  checkpoint: str, sampling: dict, agent_position: int | None = None) -> bool:
        if s.scalar(select(Item.id).where(Item.prompt_id == prompt_id, Item.round == round)) is not None:
            return False
        item = Item(project_id=self.project.id, prompt_id=prompt_id, round=round, created_at=self.clock())
        s.add(item)
        s.flush()
        # the agent's real reply (``agent_position``) is marked by its model name only, which reviewers never see
        s.add_all(Candidate(item_id=item.id, position=p, text=text,
                            model=AGENT_MODEL if p == agent_position else model[:500],
                            checkpoint="" if p == agent_position else checkpoint[:500],
                            sampling={} if p == agent_position else sampling[p] if isinstance(sampling, list)
                            else sampling, round=round)
                  for p, text in enumerate(replies))
        return True

    def prompts_needing_candidates(self, round: int) -> list[tuple[int, Any]]:
        """``(prompt_id, prompt)`` of the project's prompts with no item in ``round`` yet."""
        with self.sessions() as s:
            have = select(Item.prompt_id).where(Item.round == round)
            rows = s.execute(select(PromptRow.id, PromptRow.prompt)
                             .where(PromptRow.project_id == self.project.id, PromptRow.id.not_in(have))
                             .order_by(PromptRow.id))
            return [(pid, prompt) for pid, prompt in rows]

    def add_candidates(self, prompt_id: int, round: int, replies: list[str], model: str, checkpoint: str = "",
                       sampling: dict | list[dict] | None = None, agent_position: int | None = None) -> bool:
        """Store the K generated replies of one prompt as an item; False if that item already exists.
        ``sampling``: how they were generated, one record for all or one per reply (with its end).
        ``agent_position``: the reply at that position is the agent's real reply (stored as model
        ``AGENT_MODEL``), the others the policy's."""
        k = self.refresh_project().k
        if len(replies) != k:
            raise Invalid(f"replies: need exactly K={k}, got {len(replies)}")
        if agent_position is not None and not 0 <= agent_position < k:
            raise Invalid(f"agent_position: must be in 0..{k - 1} (got {agent_position})")
        return self._run(lambda s: self._add_item(s, prompt_id, round, replies, model, checkpoint, sampling or {},
                                                  agent_position))

    def reference_replies(self, prompt_ids: list[int]) -> dict[int, str]:
        """The agents' reference replies of these prompts (chat-log imports), by prompt id; prompts
        without one are left out."""
        wanted = set(prompt_ids)
        with self.sessions() as s:  # by project, not by an IN list: there can be more ids than SQLite binds
            rows = s.execute(select(PromptRow.id, PromptRow.reference_reply)
                             .where(PromptRow.project_id == self.project.id, PromptRow.reference_reply.is_not(None)))
            return {pid: text for pid, text in rows if pid in wanted and text and text.strip()}

    # -- hand-out ---------------------------------------------------------------------------------

    def next_item(self, actor: Actor) -> ItemView | None:
        """The item this reviewer should rank now: their unexpired lease if they hold one, else a new
        lease on the item closest to complete that they have never been handed. None when none is left."""
        return self._call(self._next_item_work(actor), durable=False)

    async def next_item_async(self, actor: Actor) -> ItemView | None:
        return await self._call_async(self._next_item_work(actor), durable=False)

    def _next_item_work(self, actor: Actor) -> Callable[[Session], ItemView | None]:
        def work(s: Session) -> ItemView | None:
            conn, now = s.connection(), self.clock()
            held = conn.execute(_Hot.held, {"uid": actor.id, "now": now}).first()
            if held is not None:
                return self._item_view_core(conn, held.item_id, held.shown_order, held.expires_at)
            if now >= self._next_sweep:  # walked-away reviewers: their slots open again
                conn.execute(_Hot.sweep, {"now": now})
                self._next_sweep = now + 1.0
            if now >= self._next_settings_read:  # `rlhf app settings` or another server process may have
                self._follow_settings(conn)  # changed them: followed within seconds, not per hand-out
                self._next_settings_read = now + 5.0
            rpi = self.project.reviewers_per_item
            item_id = conn.execute(_Hot.pick, {"pid": self.project.id, "uid": actor.id, "rpi": rpi}).scalar()
            if item_id is None:
                return None  # gold comes only among real items: a queue of gold alone would give it away
            gold_id = self._gold_pick(conn, actor) if self.project.gold_rate > 0 else None
            if gold_id is not None:
                item_id, slot = gold_id, None  # a gold lease holds no slot: every reviewer gets the item
            else:
                used = set(conn.execute(_Hot.used_slots, {"item": item_id}).scalars()) if rpi > 1 else set()
                slot = min(set(range(rpi)) - used)
            # The item's own replies set the order's length, not the K this process started with: a
            # CLI import may have changed the project's K (allowed while it held no items) meanwhile.
            rows = conn.execute(_Hot.view, {"item": item_id}).all()
            order = [r.position for r in rows]
            random.shuffle(order)  # position bias: each reviewer sees the candidates in their own order
            expires = self.lease_expires_at(now)
            # A concurrent holder of this slot (PostgreSQL) fails here on the unique constraint; we retry.
            conn.execute(_Hot.add_lease, {"item_id": item_id, "user_id": actor.id, "slot": slot, "state": LEASED,
                                          "shown_order": order, "leased_at": now, "expires_at": expires})
            return self._item_view_of(rows, item_id, order, expires)

        return work

    def _follow_settings(self, conn) -> None:
        """Copy the project's stored settings onto ``self.project`` (a detached row) and the lease time."""
        row = conn.execute(_Hot.settings, {"pid": self.project.id}).first()
        for name, value in row._mapping.items():
            setattr(self.project, name, value)
        if row.lease_seconds:
            self.lease_seconds = row.lease_seconds

    def _gold_pick(self, conn, actor: Actor) -> int | None:
        """A gold item for this hand-out if one is due (``gold.gold_due``) and one is left, else None."""
        from feedback_app.gold import gold_due

        seen_total, seen_gold = conn.execute(_Hot.handed_counts, {"uid": actor.id}).one()
        if not gold_due(random.random(), self.project.gold_rate, seen_gold, seen_total):
            return None
        return conn.execute(_Hot.pick_gold, {"pid": self.project.id, "uid": actor.id}).scalar()

    def _item_view_core(self, conn, item_id: int, shown_order: list[int], expires_at: float | None) -> ItemView:
        return self._item_view_of(conn.execute(_Hot.view, {"item": item_id}).all(), item_id, shown_order, expires_at)

    def _item_view_of(self, rows, item_id: int, shown_order: list[int], expires_at: float | None) -> ItemView:
        by_position = {r.position: r for r in rows}
        return ItemView(item_id=item_id, prompt=rows[0].prompt,
                        candidates=[_candidate_view(by_position[p]) for p in shown_order],
                        round=rows[0].round, guideline=self.project.guideline,
                        guideline_version=self.project.guideline_version, lease_expires_at=expires_at)

    # -- rankings ---------------------------------------------------------------------------------

    def submit_ranking(self, actor: Actor, item_id: int, ranks: list[int], idempotency_key: str,
                       seconds: float | None = None, simulated: bool = False) -> RankingView:
        """Store ``ranks`` (one per candidate, in the order this reviewer was shown them; 1 best; ties
        allowed). A retry with the same ``idempotency_key`` returns the stored ranking unchanged."""
        return self._call(self._submit_work(actor, item_id, ranks, idempotency_key, seconds, simulated))

    async def submit_ranking_async(self, actor: Actor, item_id: int, ranks: list[int], idempotency_key: str,
                                   seconds: float | None = None, simulated: bool = False) -> RankingView:
        return await self._call_async(self._submit_work(actor, item_id, ranks, idempotency_key, seconds, simulated))

    async def submit_and_next_async(self, actor: Actor, item_id: int, ranks: list[int], idempotency_key: str,
                                    seconds: float | None = None, simulated: bool = False
                                    ) -> tuple[RankingView, ItemView | None]:
        """Submit, then hand out the next item: one round trip for the reviewer. On SQLite both go to the
        writer thread at once (it runs them in order, usually in one transaction)."""
        submit = self._submit_work(actor, item_id, ranks, idempotency_key, seconds, simulated)
        if self._group is None:
            view = await self._call_async(submit)
            return view, await self.next_item_async(actor)
        submitted = asyncio.wrap_future(self._group.submit(submit))
        handed = asyncio.wrap_future(self._group.submit(self._next_item_work(actor), durable=False))
        try:
            view = await submitted
        except BaseException:
            await asyncio.gather(handed, return_exceptions=True)  # the lease it may hold stays (it expires)
            raise
        return view, await handed

    def _submit_work(self, actor: Actor, item_id: int, ranks: list[int], idempotency_key: str,
                     seconds: float | None, simulated: bool) -> Callable[[Session], RankingView]:
        key = _check_key(idempotency_key)
        if seconds is not None and not (0 <= seconds < 1e7):
            raise Invalid("seconds: must be between 0 and 1e7")

        def replay(conn, row) -> RankingView:
            return _ranking_view_core(conn, row.id, row.item_id, row.ranks, row.shown_order, row.simulated,
                                      row.created_at, replayed=True)

        def work(s: Session) -> RankingView:
            conn = s.connection()
            stored = conn.execute(_Hot.stored_by_key, {"uid": actor.id, "key": key}).first()
            if stored is not None:
                if stored.item_id != item_id:
                    raise Conflict(f"idempotency_key: already used for item {stored.item_id}")
                return replay(conn, stored)
            lease = conn.execute(_Hot.lease, {"item": item_id, "uid": actor.id}).first()
            if lease is None:
                _not_handed(s, item_id)
            if lease.state == DONE:
                # On PostgreSQL (read committed) a concurrent retry with this key may have committed
                # between our two reads: look again before calling it a conflict.
                done = conn.execute(_Hot.stored_by_lease, {"aid": lease.id}).first()
                if done is not None and done.idempotency_key == key:
                    return replay(conn, done)
                raise Conflict(f"item {item_id}: you already ranked it; edit or undo that ranking instead")
            if lease.state == SKIPPED:
                raise Conflict(f"item {item_id}: you skipped it")
            now = self.clock()
            if self.lease_expired(lease.expires_at, now):
                raise LeaseExpired(f"item {item_id}: your lease expired {now - (lease.expires_at or now):.0f} s ago; "
                                   f"fetch the next item again")
            canonical = _to_positions(_check_ranks(ranks, len(lease.shown_order)), lease.shown_order)
            conn.execute(_Hot.close_lease, {"aid": lease.id})
            result = conn.execute(_Hot.add_ranking, {
                "item_id": item_id, "user_id": actor.id, "assignment_id": lease.id, "ranks": canonical,
                "shown_order": lease.shown_order, "guideline_version": self.project.guideline_version,
                "seconds": seconds, "simulated": bool(simulated), "idempotency_key": key, "created_at": now,
                "updated_at": None, "edit_count": 0})
            return _ranking_view_core(conn, result.inserted_primary_key[0], item_id, canonical, lease.shown_order,
                                      bool(simulated), now)

        return work

    def _own_assignment(self, s: Session, actor: Actor, item_id: int) -> Assignment:
        lease = s.scalar(select(Assignment).where(Assignment.item_id == item_id, Assignment.user_id == actor.id))
        if lease is None:
            _not_handed(s, item_id)
        return lease

    def edit_ranking(self, actor: Actor, ranking_id: int, ranks: list[int]) -> RankingView:
        """Replace the ranks of one of the actor's own rankings (in the order they were shown)."""

        def work(s: Session) -> RankingView:
            row = s.get(RankingRow, ranking_id)
            if row is None or row.user_id != actor.id:  # another's ranking looks like a missing one
                raise NotFound(f"ranking {ranking_id}: no such ranking of yours")
            row.ranks = _to_positions(_check_ranks(ranks, len(row.shown_order)), row.shown_order)
            row.updated_at, row.edit_count = self.clock(), row.edit_count + 1
            s.flush()
            return _ranking_view(row)

        return self._run(work)

    def undo_last(self, actor: Actor) -> ItemView:
        """Delete the actor's latest ranking and hand its item back to them under a fresh lease."""

        def work(s: Session) -> ItemView:
            row = s.scalar(select(RankingRow).where(RankingRow.user_id == actor.id)
                           .order_by(RankingRow.created_at.desc(), RankingRow.id.desc()).limit(1))
            if row is None:
                raise NotFound("undo: you have no ranking to undo")
            lease = s.get(Assignment, row.assignment_id)
            s.delete(row)
            s.flush()
            now = self.clock()
            lease.state, lease.leased_at, lease.expires_at = LEASED, now, self.lease_expires_at(now)
            s.flush()
            return self._item_view_core(s.connection(), lease.item_id, lease.shown_order, lease.expires_at)

        return self._run(work)

    def my_rankings(self, actor: Actor, limit: int = 50) -> list[RankingView]:
        """The actor's own rankings, newest first (never anyone else's)."""
        with self.sessions() as s:
            rows = s.scalars(select(RankingRow).where(RankingRow.user_id == actor.id)
                             .order_by(RankingRow.id.desc()).limit(limit))
            return [_ranking_view(r) for r in rows]

    # -- skip and flag ----------------------------------------------------------------------------

    def skip(self, actor: Actor, item_id: int) -> None:
        """Give the item's slot back; this reviewer is not handed it again."""

        def work(s: Session) -> None:
            lease = self._own_assignment(s, actor, item_id)
            if lease.state == DONE:
                raise Conflict(f"item {item_id}: already ranked; undo the ranking first")
            lease.state, lease.slot, lease.expires_at = SKIPPED, None, None

        self._run(work)

    def flag(self, actor: Actor, item_id: int, kind: str, comment: str = "", candidate_id: int | None = None) -> int:
        """Flag one reply (``candidate_id``) or the whole item as unsafe, broken or off-topic.

        Flagged replies are left out of the export unless asked for. Reviewers flag only items handed
        to them; admins flag any."""
        if kind not in FLAG_KINDS:
            raise Invalid(f"kind: must be one of {', '.join(FLAG_KINDS)} (got {kind!r})")
        if len(comment or "") > 2000:
            raise Invalid("comment: at most 2000 characters")

        def work(s: Session) -> int:
            if actor.is_admin:
                if s.get(Item, item_id) is None:
                    raise NotFound(f"item {item_id}: unknown item")
            else:
                self._own_assignment(s, actor, item_id)
            if candidate_id is not None:
                cand = s.get(Candidate, candidate_id)
                if cand is None or cand.item_id != item_id:
                    raise NotFound(f"candidate_id: {candidate_id} is not a reply of item {item_id}")
            flag = Flag(item_id=item_id, candidate_id=candidate_id, user_id=actor.id, kind=kind,
                        comment=comment or "", created_at=self.clock())
            s.add(flag)
            s.flush()
            return flag.id

        return self._run(work)

    # -- progress ---------------------------------------------------------------------------------

    def progress(self, actor: Actor) -> Progress:
        """The actor's own counts; for an admin also the project's totals."""
        now = self.clock()
        with self.sessions() as s:
            def count(*where) -> int:
                return s.scalar(select(func.count(Assignment.id)).where(*where)) or 0

            mine = Assignment.user_id == actor.id
            ranked, skipped = count(mine, Assignment.state == DONE), count(mine, Assignment.state == SKIPPED)
            leased = count(mine, Assignment.state == LEASED, Assignment.expires_at > now)
            live = (Assignment.slot.is_not(None)) & ((Assignment.state == DONE) | (Assignment.expires_at > now))
            taken = (select(Assignment.item_id, func.count(Assignment.id).label("n")).where(live)
                     .group_by(Assignment.item_id).subquery())
            seen = select(Assignment.item_id).where(mine)
            available = s.scalar(select(func.count(Item.id)).outerjoin(taken, taken.c.item_id == Item.id)
                                 .where(Item.project_id == self.project.id, Item.id.not_in(seen),
                                        Item.id.not_in(select(GoldItem.item_id)),  # gold comes unannounced
                                        func.coalesce(taken.c.n, 0) < self.project.reviewers_per_item)) or 0
            totals: dict[str, int] = {}
            if actor.is_admin:
                pid = self.project.id
                totals = {
                    "prompts": s.scalar(select(func.count(PromptRow.id)).where(PromptRow.project_id == pid)) or 0,
                    "items": s.scalar(select(func.count(Item.id)).where(Item.project_id == pid)) or 0,
                    "rankings": s.scalar(select(func.count(RankingRow.id)).join(Item)
                                         .where(Item.project_id == pid)) or 0,
                    "skips": count(Assignment.state == SKIPPED),
                    "flags": s.scalar(select(func.count(Flag.id))) or 0,
                    "reviewers": s.scalar(select(func.count(User.id))) or 0,
                }
            return Progress(ranked, skipped, leased, available, totals)


# ---------------------------------------------------------------------------------------------------
# Group commit (SQLite)


class GroupCommit:
    """Run concurrent callers' transactions as savepoints of ONE SQLite transaction, then commit once.

    With ``synchronous=FULL`` every commit waits for an fsync (5 to 10 ms here), which capped the
    app at about 50 rankings per second whatever the CPU. Callers queue their work; a worker thread
    takes everything queued, runs each piece in its own savepoint (a failing one is rolled back alone
    and gets its exception), commits, and only then answers every caller. Nothing is acknowledged
    before it is durable. The worker exits when idle and is started again on demand.
    """

    def __init__(self, sessions: sessionmaker[Session], write_lock, max_batch: int = 64):
        self.sessions, self.write_lock, self.max_batch = sessions, write_lock, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._state = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, work: Callable[[Session], T], durable: bool = True) -> Future:
        """Queue ``work``; the future resolves after the transaction holding it has committed."""
        future: Future = Future()
        with self._state:
            self._queue.put((work, future, durable))
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="sqlite-group-commit", daemon=True)
                self._worker.start()
        return future

    def _loop(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=2.0)]
            except queue.Empty:
                with self._state:
                    if self._queue.empty():  # checked under the lock `run` puts under: nothing is stranded
                        self._worker = None
                        return
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        outcomes = []
        durable = any(entry[2] for entry in batch)  # leases alone may skip the fsync (see db.py)
        try:
            with (nullcontext() if durable else relaxed_durability()), self.write_lock, \
                    self.sessions() as session, session.begin():
                for work, future, _ in batch:
                    try:
                        with session.begin_nested():
                            outcomes.append((future, work(session), None))
                    except Exception as exc:  # this caller's error only; its savepoint is rolled back
                        outcomes.append((future, None, exc))
        except BaseException as exc:  # the commit itself failed: nobody's work is stored or acknowledged
            for _, future, _ in batch:
                future.set_exception(exc)
            return
        for future, value, exc in outcomes:
            future.set_exception(exc) if exc is not None else future.set_result(value)


# ---------------------------------------------------------------------------------------------------
# Helpers


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text or "could not serialize" in text


def _audit(s: Session, by: Actor | None, at: float, action: str, target: str, detail: dict) -> AuditEntry:
    entry = AuditEntry(at=at, actor=by.username if by is not None else "cli", action=action, target=target[:500],
                       detail=detail)
    s.add(entry)
    return entry


def _set_gold(s: Session, item_id: int, ranks: list[int], marked_by: str, now: float) -> None:
    row = s.get(GoldItem, item_id)
    if row is None:
        s.add(GoldItem(item_id=item_id, ranks=list(ranks), marked_by=marked_by, marked_at=now))
    else:
        row.ranks, row.marked_by, row.marked_at = list(ranks), marked_by, now


def _next_version(version: str) -> str:
    """The guideline version after ``version``: "3" -> "4", "v1.09" -> "v1.10", "draft" -> "draft.1"."""
    match = re.search(r"(\d+)$", version or "")
    if match is None:
        return f"{version}.1" if version else "1"
    digits = match.group(1)
    return version[:match.start()] + str(int(digits) + 1).zfill(len(digits))


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > 200:
        raise Invalid("idempotency_key: give a non-empty text of at most 200 characters (e.g. a UUID)")
    return key


def _check_ranks(ranks: Any, k: int) -> list[int]:
    try:
        return validate_ranks(ranks, k)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _to_positions(shown_ranks: list[int], shown_order: list[int]) -> list[int]:
    """Ranks given in the order shown -> ranks by candidate position (how they are stored)."""
    canonical = [0] * len(shown_order)
    for shown_index, position in enumerate(shown_order):
        canonical[position] = shown_ranks[shown_index]
    return canonical


def _not_handed(s: Session, item_id: int) -> None:
    """The error for an item the actor holds no assignment on."""
    if s.get(Item, item_id) is None:
        raise NotFound(f"item {item_id}: unknown item")
    raise NotFound(f"item {item_id}: not handed to you (fetch the next item first)")


def _ranking_view(row: RankingRow, replayed: bool = False) -> RankingView:
    return _view_of(row.id, row.item_id, row.ranks, row.shown_order, {c.position: c.id for c in row.item.candidates},
                    row.simulated, row.created_at, replayed)


def _ranking_view_core(conn, ranking_id: int, item_id: int, ranks: list[int], shown_order: list[int],
                       simulated: bool, created_at: float, replayed: bool = False) -> RankingView:
    """``_ranking_view`` from column values: one small query for the reply ids, no ORM objects."""
    by_position = dict(conn.execute(_Hot.candidate_ids, {"item": item_id}).tuples().all())
    return _view_of(ranking_id, item_id, ranks, shown_order, by_position, simulated, created_at, replayed)


def _view_of(ranking_id: int, item_id: int, ranks: list[int], shown_order: list[int], by_position: dict[int, int],
             simulated: bool, created_at: float, replayed: bool) -> RankingView:
    """Ranks stored by candidate position -> the view in the order this reviewer was shown them."""
    return RankingView(ranking_id=ranking_id, item_id=item_id, ranks=[ranks[p] for p in shown_order],
                       candidate_ids=[by_position[p] for p in shown_order], simulated=bool(simulated),
                       created_at=created_at, replayed=replayed)
