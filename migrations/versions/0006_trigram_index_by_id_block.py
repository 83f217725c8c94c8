"""Audit at scale (issue 3): the trigram index of `q` keys each row's block of ids too.

A newest-first `q` search reads the newest block of 2**20 ids first (backend/audit/listing.py),
and the older rows only if that block holds less than a page. With the block in the index
(`id >> 20`, through btree_gin), PostgreSQL reads the heap pages of that block's matches
alone: a rare substring at 10M rows, ~600 of its ~5,000 matching rows, 2.3 instead of 12 ms.
The index still serves a search on `track` alone (asc order, the older rows).

Built CONCURRENTLY, and the old index dropped CONCURRENTLY after: the audit table takes a
write on every request, and neither step may hold those off (nor do the ANALYZE after and
the table's autovacuum settings, whose lock writes do not wait for).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OLD = "ix_audit_log_track_trgm"
NEW = "ix_audit_log_track_trgm_block"
BLOCK = "(id >> 20)"  # backend/models.py, ID_BLOCK_BITS (a migration keeps its own copy)


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no trigram index: it scans
    with op.get_context().autocommit_block():
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
        # A build that was interrupted leaves an INVALID index of this name behind.
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NEW}")
        op.execute(f"CREATE INDEX CONCURRENTLY {NEW} ON audit_log"
                   f" USING gin (track gin_trgm_ops, {BLOCK})")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {OLD}")
        # Statistics of the new expression, which the planner needs to see that a block holds
        # many rows: without them it took a common substring's 80,000 matches in the newest
        # block for a few and fetched and sorted them all (145 ms at 10M rows, not 0.8).
        op.execute("ANALYZE audit_log")
        # And keep them fresh: by default autovacuum analyzes a table after a tenth of it
        # changes, a whole block at 10M rows, while the newest block's count grew unseen.
        op.execute("ALTER TABLE audit_log SET (autovacuum_analyze_scale_factor = 0,"
                   " autovacuum_analyze_threshold = 100000)")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE audit_log RESET (autovacuum_analyze_scale_factor,"
                   " autovacuum_analyze_threshold)")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {OLD}")
        op.execute(f"CREATE INDEX CONCURRENTLY {OLD} ON audit_log USING gin (track gin_trgm_ops)")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NEW}")
        # btree_gin stays: it may have been there before, and other objects may use it.
