"""Conversations in, personal data out: the agent's reference reply beside its prompt, the salted
hashes of the conversation id and customer identifier (so an erasure request finds the prompts), and
the project's redaction settings and salt.

Revision ID: 0005
Revises: 0004

Existing prompts keep their data: they have no reference reply and no conversation or customer hash
(NULL). Existing projects get a fresh random salt; their redaction settings stay NULL (the defaults).
"""
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("reference_reply", sa.Text, nullable=True))
        batch.add_column(sa.Column("conversation_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("customer_key", sa.String(64), nullable=True))
    op.create_index("ix_prompts_conversation_key", "prompts", ["conversation_key"])
    op.create_index("ix_prompts_customer_key", "prompts", ["customer_key"])
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("redaction", sa.JSON, nullable=True))
        batch.add_column(sa.Column("redaction_salt", sa.String(64), nullable=True))
    conn = op.get_bind()
    for (project_id,) in conn.execute(sa.text("SELECT id FROM projects")).all():
        conn.execute(sa.text("UPDATE projects SET redaction_salt = :salt WHERE id = :id"),
                     {"salt": secrets.token_hex(16), "id": project_id})


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("redaction_salt")
        batch.drop_column("redaction")
    op.drop_index("ix_prompts_customer_key", "prompts")
    op.drop_index("ix_prompts_conversation_key", "prompts")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("customer_key")
        batch.drop_column("conversation_key")
        batch.drop_column("reference_reply")
