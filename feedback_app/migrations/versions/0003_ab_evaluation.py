"""Blind A/B evaluation: ab_sets, ab_items, ab_judgements (feedback_app/ab_store.py).

Revision ID: 0003
Revises: 0002

New tables only: existing rows are untouched.
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ab_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("policy_a", sa.String(500), nullable=False),
        sa.Column("policy_b", sa.String(500), nullable=False),
        sa.Column("judgements_per_item", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_index("ix_ab_sets_project_id", "ab_sets", ["project_id"])
    op.create_table(
        "ab_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("set_id", sa.Integer, sa.ForeignKey("ab_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("reply_a", sa.Text, nullable=False),
        sa.Column("reply_b", sa.Text, nullable=False),
    )
    op.create_index("ix_ab_items_set_id", "ab_items", ["set_id"])
    op.create_table(
        "ab_judgements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("ab_items.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("left_is_a", sa.Boolean, nullable=False),
        sa.Column("verdict", sa.String(20), nullable=True),
        sa.Column("winner", sa.String(20), nullable=True),
        sa.Column("simulated", sa.Boolean, nullable=False),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("shown_at", sa.Float, nullable=False),
        sa.Column("answered_at", sa.Float, nullable=True),
        sa.UniqueConstraint("item_id", "user_id"),
    )
    op.create_index("ix_ab_judgements_item_id", "ab_judgements", ["item_id"])
    op.create_index("ix_ab_judgements_user_id", "ab_judgements", ["user_id"])


def downgrade() -> None:
    op.drop_table("ab_judgements")
    op.drop_table("ab_items")
    op.drop_table("ab_sets")
