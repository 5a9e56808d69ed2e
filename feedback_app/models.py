"""The feedback store's tables (SQLAlchemy ORM). Times are UNIX seconds (float), the same on every
database. JSON columns hold prompts (text or chat messages), ranks and sampling settings.

Constraints carry the hand-out rules, because SQLite has no row locks:
  assignments (item, reviewer) unique   a reviewer never gets the same item twice
  assignments (item, slot) unique       two reviewers never hold the same open slot of an item
  rankings (item, reviewer) unique      no duplicate ranking
  rankings (reviewer, idempotency key)  a retried submission finds the ranking it already stored

Foreign keys to ``users`` are RESTRICT: accounts are disabled, never deleted, and no delete of an
account may take its rankings (or the leases and flags behind them) with it.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import (JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "reviewer")
FLAG_KINDS = ("unsafe", "broken", "off-topic")
LEASED, DONE, SKIPPED = "leased", "done", "skipped"


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    k: Mapped[int] = mapped_column(Integer)  # replies per prompt, 2..6
    reviewers_per_item: Mapped[int] = mapped_column(Integer)
    guideline: Mapped[str] = mapped_column(Text, default="")
    guideline_version: Mapped[str] = mapped_column(String(50), default="1")
    created_at: Mapped[float] = mapped_column(Float)
    # added in revision 0005: feedback_app.redact.RedactionSettings as stored (NULL: the defaults), and
    # the salt of the conversation/customer hashes (erasure on request finds prompts by them)
    redaction: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    redaction_salt: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    # added in revision 0006: gold items' share of hand-outs, the thresholds below which a reviewer is
    # flagged on the dashboard, the lease time (NULL: the server's config), and the settings version
    # (bumped by each edit from the admin page or CLI; above 0 the stored settings win at server start)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    gold_threshold: Mapped[float] = mapped_column(Float, default=0.7, server_default="0.7")
    agreement_threshold: Mapped[float] = mapped_column(Float, default=0.6, server_default="0.6")
    lease_seconds: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    settings_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PromptRow(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "prompt_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[Any] = mapped_column(JSON)  # text or chat messages
    prompt_key: Mapped[str] = mapped_column(String(64))  # rlhf.schema.prompt_key
    source: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[float] = mapped_column(Float)
    # added in revision 0005: the agent's real reply that followed (redacted), and salted hashes of the
    # chat log's conversation id and customer identifier (never the raw values)
    reference_reply: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    conversation_key: Mapped[Optional[str]] = mapped_column(String(64), nullable=True, index=True)
    customer_key: Mapped[Optional[str]] = mapped_column(String(64), nullable=True, index=True)


def privacy_unit(prompt) -> str:
    """The differential-privacy unit of a prompt's rankings and demonstrations (``prompt``: a ``PromptRow``, or a
    selected row with its ``customer_key``, ``conversation_key`` and ``prompt_key``): the customer when the chat
    log named one (all their conversations together), else the conversation, else the prompt itself (a
    plain-prompt import). Customer and conversation keys are the store's salted hashes, never the raw identifiers."""
    if prompt.customer_key:
        return f"customer:{prompt.customer_key}"
    if prompt.conversation_key:
        return f"conversation:{prompt.conversation_key}"
    return f"prompt:{prompt.prompt_key}"


class Item(Base):
    """One prompt with its K candidate replies from one generation round: what a reviewer ranks."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("prompt_id", "round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    # Hand-out order, higher first, then oldest first (revision 0008): 0 until `rlhf app prioritise`
    # scores the open items by how unsure an ensemble of reward probes is about them.
    priority: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    prompt_row: Mapped[PromptRow] = relationship(lazy="joined")
    candidates: Mapped[list["Candidate"]] = relationship(order_by="Candidate.position", lazy="selectin")


# The hand-out walks this index and stops at the first item with an open slot (``store._Hot.pick``).
Index("ix_items_hand_out", Item.project_id, Item.priority.desc(), Item.id)


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("item_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # 0..K-1: the order ranks are stored in
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(500), default="")
    checkpoint: Mapped[str] = mapped_column(String(500), default="")
    sampling: Mapped[Any] = mapped_column(JSON, default=dict)
    round: Mapped[int] = mapped_column(Integer, default=0)


class GoldItem(Base):
    """An item with a known ranking (revision 0006): mixed into every reviewer's queue at the project's
    ``gold_rate``, scored against ``ranks``, kept out of exports and agreement figures."""

    __tablename__ = "gold_items"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    ranks: Mapped[Any] = mapped_column(JSON)  # known rank per reply position, 1 best, ties allowed
    marked_by: Mapped[str] = mapped_column(String(100), default="")  # admin's username, or "cli"/"import"
    marked_at: Mapped[float] = mapped_column(Float)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(500))
    role: Mapped[str] = mapped_column(String(20))  # admin | reviewer
    created_at: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # added in revision 0002
    # Revision 0004: case-folded NFKC name (auth.username_key), unique, so "Admin" cannot sit beside
    # "admin"; and the session version every login token must match (bumped to end its sessions).
    username_key: Mapped[str] = mapped_column(String(100), unique=True)
    session_version: Mapped[int] = mapped_column(Integer, default=0)


class Assignment(Base):
    """A reviewer's hold on one slot of an item: leased (until ``expires_at``), done or skipped.

    A skipped assignment gives its slot back (``slot`` NULL; NULLs never collide in a unique
    constraint) but keeps the row, so the reviewer is not handed the item again.
    """

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"), UniqueConstraint("item_id", "slot"),
                      Index("ix_assignments_state_expires", "state", "expires_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    slot: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(20))
    shown_order: Mapped[Any] = mapped_column(JSON)  # candidate positions in the order shown
    leased_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    item: Mapped[Item] = relationship(lazy="joined")


class RankingRow(Base):
    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("item_id", "user_id"), UniqueConstraint("user_id", "idempotency_key"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    ranks: Mapped[Any] = mapped_column(JSON)  # ranks[p] = rank of the candidate at position p
    shown_order: Mapped[Any] = mapped_column(JSON)  # positions in the (shuffled) order the reviewer saw
    guideline_version: Mapped[str] = mapped_column(String(50))
    seconds: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[Optional[float]] = mapped_column(Float, nullable=True)  # added in revision 0002
    edit_count: Mapped[int] = mapped_column(Integer, default=0)  # added in revision 0002
    item: Mapped[Item] = relationship(lazy="joined")
    user: Mapped[User] = relationship(lazy="joined")


class Flag(Base):
    """A reviewer's flag on one reply (``candidate_id``) or on the whole item (``candidate_id`` NULL)."""

    __tablename__ = "flags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[Optional[int]] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"), nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


# ---------------------------------------------------------------------------------------------------
# The blind A/B evaluation (revision 0003); the service is ``feedback_app.ab_store``.


class AbSet(Base):
    __tablename__ = "ab_sets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    policy_a: Mapped[str] = mapped_column(String(500))  # shown to admins only
    policy_b: Mapped[str] = mapped_column(String(500))
    judgements_per_item: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class AbItem(Base):
    __tablename__ = "ab_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("ab_sets.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[Any] = mapped_column(JSON)
    reply_a: Mapped[str] = mapped_column(Text)
    reply_b: Mapped[str] = mapped_column(Text)


class AbJudgement(Base):
    """One reviewer's judgement of one item: the blind order drawn at hand-out, then the verdict."""

    __tablename__ = "ab_judgements"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("ab_items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    left_is_a: Mapped[bool] = mapped_column(Boolean)  # the blind order, drawn when handed out
    verdict: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)  # left|right|tie|both_bad
    winner: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)  # a|b|tie|both_bad
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    seconds: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    shown_at: Mapped[float] = mapped_column(Float)
    answered_at: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    item: Mapped[AbItem] = relationship(lazy="joined")


# ---------------------------------------------------------------------------------------------------
# Accounts' security (revision 0004)


class LoginThrottle(Base):
    """A login counter shared by every server process: one row per account ("account:<key>") and per
    client address ("address:<ip>"). Attempts are counted before the password is checked
    (``Store.login``); the arithmetic is ``auth.account_wait`` and ``auth.address_wait``."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)  # failures (account) or attempts (address)
    started_at: Mapped[float] = mapped_column(Float)  # start of the address's counting window
    last_at: Mapped[float] = mapped_column(Float)  # the latest counted attempt


class AuditEntry(Base):
    """An admin action: account created, role changed, disabled, password reset, import, export,
    generation started. Names, not foreign keys: the log outlives whatever it mentions."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # username of the admin, or "cli"
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[Any] = mapped_column(JSON, default=dict)


# ---------------------------------------------------------------------------------------------------
# Demonstrations (revision 0007)

DEMONSTRATION_STATUSES = ("pending", "accepted", "rejected")
BASED_ON = ("", "candidate", "reference")  # written from scratch, edited from a candidate, from the agent's reply


class Demonstration(Base):
    """The reply a reviewer wanted for a prompt: supervised fine-tuning data once an admin accepts it."""

    __tablename__ = "demonstrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[Optional[int]] = mapped_column(ForeignKey("items.id", ondelete="SET NULL"), nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)  # the author
    text: Mapped[str] = mapped_column(Text)
    based_on: Mapped[str] = mapped_column(String(20), default="", server_default="")  # one of BASED_ON
    based_on_candidate_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("candidates.id", ondelete="SET NULL"), nullable=True)
    guideline_version: Mapped[str] = mapped_column(String(50), default="", server_default="")
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending", index=True)
    reviewed_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), nullable=True)
    reviewed_at: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
