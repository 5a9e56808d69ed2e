"""Demonstrations: the reply a reviewer wanted, written on /review (issue 18).

Revision ID: 0007
Revises: 0006

* ``demonstrations``: one reply a reviewer wrote for a prompt (from scratch, or edited from a
  candidate or the agent's reference reply: ``based_on``), with its author, the guideline version it
  was written under, and the admin's decision (``status`` pending | accepted | rejected, who and when).
  The author and the reviewer are RESTRICT like every other user key (accounts are disabled, never
  deleted); the prompt CASCADEs, so erasing a conversation's prompts erases its demonstrations; the
  candidate it started from is SET NULL (the text stands on its own).
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "demonstrations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="SET NULL"), nullable=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=False,
                  index=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("based_on", sa.String(20), nullable=False, server_default=""),
        sa.Column("based_on_candidate_id", sa.Integer, sa.ForeignKey("candidates.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("guideline_version", sa.String(50), nullable=False, server_default=""),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending", index=True),
        sa.Column("reviewed_by", sa.Integer, sa.ForeignKey("users.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("reviewed_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("demonstrations")
