"""Audit at scale (issue 3): an index for a user's rows of given levels.

`user` with a `level` list (the rows of one person at WARNING and above, say) was a bitmap AND
of the user and level indexes and a sort: 5 ms of PostgreSQL time at 10M rows. With
(user, level, created_at, id) each level of the list is one ordered index range, and the
per-level merge of backend/audit/listing.py reads the page straight off them.

On PostgreSQL the index is built CONCURRENTLY, outside a transaction: the audit table takes
writes on every request, and a plain CREATE INDEX would hold them off for the whole build.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_audit_log_user_level_created_at_id"
COLUMNS = ["user", "level", "created_at", "id"]


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # A build that was interrupted leaves an INVALID index of this name behind.
            op.drop_index(INDEX, table_name="audit_log", if_exists=True,
                          postgresql_concurrently=True)
            op.create_index(INDEX, "audit_log", COLUMNS, postgresql_concurrently=True)
    else:
        op.create_index(INDEX, "audit_log", COLUMNS)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(INDEX, table_name="audit_log", postgresql_concurrently=True)
    else:
        op.drop_index(INDEX, table_name="audit_log")
