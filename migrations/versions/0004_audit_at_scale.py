"""Audit at scale (issue 3): indexes for the query shapes, trigram search.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite scans for `q`; it is the small, embedded database.
    # Trusted since PostgreSQL 13: the database's owner may create it without superuser.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index("ix_audit_log_track_trgm", "audit_log", ["track"], postgresql_using="gin",
                    postgresql_ops={"track": "gin_trgm_ops"})


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_audit_log_track_trgm", table_name="audit_log")
    # pg_trgm stays: it may have been there before, and other objects may use it.
