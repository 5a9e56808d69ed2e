"""Ranking edits (updated_at, edit_count) and deactivatable users (active).

Revision ID: 0002
Revises: 0001

Existing rows keep their data: the new columns get server defaults (never edited; active).
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rankings") as batch:
        batch.add_column(sa.Column("updated_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("edit_count", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("active")
    with op.batch_alter_table("rankings") as batch:
        batch.drop_column("edit_count")
        batch.drop_column("updated_at")
