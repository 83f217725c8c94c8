"""Audit at scale (issue 3): a short pending list for the trigram index of `q`.

A GIN index queues new entries in a pending list, which every search reads through in full
before the index proper, until the list passes gin_pending_list_limit (4 MB by default) and an
insert merges it. The audit table takes a row on every request, so at the default a `q`
search slowed as the list grew: 2,461 pending rows added 1.5 ms to a 13 ms search at 10M rows,
and a full list holds about five times that. At 256 kB the list holds a few hundred rows. The
merges come more often; an insert of realistic rows cost 9.3 instead of 7.0 µs, a hundredth
of what PostgreSQL spends on an audited request.

Changing the setting takes a SHARE UPDATE EXCLUSIVE lock, which writes do not wait for.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEX = "ix_audit_log_track_trgm"


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {INDEX} SET (gin_pending_list_limit = 256)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {INDEX} RESET (gin_pending_list_limit)")
