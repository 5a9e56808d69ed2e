"""Gold items and project settings edited from the admin page.

Revision ID: 0006
Revises: 0005

* ``gold_items``: an item an admin marked with its known ranking (ranks by reply position, 1 best; a
  known best reply alone is that reply at 1 and every other at 2). Gold items are handed to every
  reviewer at the project's ``gold_rate``, whatever ``reviewers_per_item`` says, and stay out of
  exports and agreement figures.
* ``projects``: ``gold_rate`` (share of hand-outs that are gold), ``gold_threshold`` and
  ``agreement_threshold`` (a reviewer below either is flagged on the dashboard), ``lease_seconds``
  (NULL: the server's config), and ``settings_version`` (bumped by every edit from the admin page or
  CLI; once above 0 the stored settings win over the config's at server start).

Existing projects get no gold, a rate of 0, the default thresholds and settings version 0.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gold_items",
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("ranks", sa.JSON, nullable=False),
        sa.Column("marked_by", sa.String(100), nullable=False, server_default=""),
        sa.Column("marked_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("gold_rate", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("gold_threshold", sa.Float, nullable=False, server_default="0.7"))
        batch.add_column(sa.Column("agreement_threshold", sa.Float, nullable=False, server_default="0.6"))
        batch.add_column(sa.Column("lease_seconds", sa.Float, nullable=True))
        batch.add_column(sa.Column("settings_version", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("settings_version")
        batch.drop_column("lease_seconds")
        batch.drop_column("agreement_threshold")
        batch.drop_column("gold_threshold")
        batch.drop_column("gold_rate")
    op.drop_table("gold_items")
