"""The structured record (issue "Who did what to what"): who acted (`actor_id`, `token_id`), on
what (`target_type`, `target_id`, `target`), with what result (`outcome`) and the facts
(`details`, a JSON object: jsonb on PostgreSQL), the chain version each row is hashed under
(`chain_version`: 1 for every row written before this migration), and indexes for the new
filters.

No row is rewritten: every new column is nullable or has a constant default, which PostgreSQL
(11 and later) records in the catalog instead of writing into each row, so the ALTER TABLE holds
its lock for milliseconds on a 10M-row trail (docs/benchmarks.md, "Migration 0008"). The older
rows keep `outcome` null and `details` `{}`: their hashes (chain version 1) never covered them.
The indexes are built CONCURRENTLY on PostgreSQL, as in migration 0005: writes go on meanwhile.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_audit_log_target_created_at_id": ["target", "created_at", "id"],
    "ix_audit_log_target_type_created_at_id": ["target_type", "created_at", "id"],
    "ix_audit_log_outcome_created_at_id": ["outcome", "created_at", "id"],
}


def upgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    details = postgresql.JSONB() if postgres else sa.JSON()
    with op.batch_alter_table("audit_log", recreate="never") as table:
        table.add_column(sa.Column("actor_id", sa.BigInteger(), nullable=True))
        table.add_column(sa.Column("token_id", sa.BigInteger(), nullable=True))
        table.add_column(sa.Column("target_type", sa.String(32), nullable=True))
        table.add_column(sa.Column("target_id", sa.String(64), nullable=True))
        table.add_column(sa.Column("target", sa.String(255), nullable=True))
        table.add_column(sa.Column("outcome", sa.String(8), nullable=True))
        table.add_column(
            sa.Column("details", details, nullable=False, server_default=sa.text("'{}'"))
        )
        table.add_column(
            sa.Column(
                "chain_version", sa.SmallInteger(), nullable=False, server_default=sa.text("1")
            )
        )
    if postgres:
        with op.get_context().autocommit_block():
            for name, columns in INDEXES.items():
                # A build that was interrupted leaves an INVALID index of this name behind.
                op.drop_index(
                    name, table_name="audit_log", if_exists=True, postgresql_concurrently=True
                )
                op.create_index(name, "audit_log", columns, postgresql_concurrently=True)
    else:
        for name, columns in INDEXES.items():
            op.create_index(name, "audit_log", columns)


def downgrade():
    for name in INDEXES:
        op.drop_index(name, table_name="audit_log")
    with op.batch_alter_table("audit_log", recreate="never") as table:
        for column in (
            "chain_version",
            "details",
            "outcome",
            "target",
            "target_id",
            "target_type",
            "token_id",
            "actor_id",
        ):
            table.drop_column(column)
