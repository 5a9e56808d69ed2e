"""Item priority: the order items are handed out in (issue 14, "rankings where they teach most").

Revision ID: 0008
Revises: 0007

* ``items.priority``: a float, higher first; 0 for every item until ``rlhf app prioritise`` scores the
  items still open by how unsure an ensemble of reward probes is about their candidates. Items of equal
  priority go out oldest first, as before, so a database upgraded from 0007 hands out in the same order.
* ``ix_items_hand_out`` (project_id, priority DESC, id): the hand-out walks it and stops at the first
  item with an open slot, as it walked the primary key before; without it every hand-out would sort
  the project's items.
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("priority", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_items_hand_out", "items", ["project_id", sa.text("priority DESC"), "id"])


def downgrade() -> None:
    op.drop_index("ix_items_hand_out", table_name="items")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("priority")
