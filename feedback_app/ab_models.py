"""Tables of the blind A/B evaluation (revision 0003); the service is ``feedback_app.ab_store``.

Imported at the end of ``feedback_app.models`` so that ``Base.metadata`` (migrations, schema checks)
holds them. Import them from ``feedback_app.models`` (importing this module first is circular).
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from feedback_app.models import Base



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
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    left_is_a: Mapped[bool] = mapped_column(Boolean)  # the blind order, drawn when handed out
    verdict: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)  # left|right|tie|both_bad
    winner: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)  # a|b|tie|both_bad
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    seconds: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    shown_at: Mapped[float] = mapped_column(Float)
    answered_at: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    item: Mapped[AbItem] = relationship(lazy="joined")
