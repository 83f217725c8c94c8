"""The writer's append as one server-side function, `audit_append`, on PostgreSQL (issue 17's
request path); SQLite keeps its statements.

The writer locks the chain's head and links a batch in Python. Before this migration it then
sent its INSERTs and the head's UPDATE as one string of statements, which PostgreSQL parsed
and planned at every batch while the head stayed locked. PL/pgSQL keeps the plans of a
function's statements in each connection, so the second round trip is now one `SELECT
audit_append(...)`: a sixth less of the server's CPU an appended row, spent while the head is
locked (docs/benchmarks.md). Unlike a prepared statement, a function is no state of the
session: a pooler in transaction mode (PgBouncer's `pool_mode = transaction`) may hand each
transaction to any connection.

The rows go in as `audit_log`'s own row type (`SELECT *` of `json_populate_recordset`): a
column a later migration adds is inserted as soon as the writer sends it, with no new
version of this function. It runs with its caller's rights (the app's role, which may insert
into the trail and nothing more; the append-only triggers stay in force).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SIGNATURE = "audit_append(json, json, json, json, json)"


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION audit_append(
            log_rows json, nodes json, checkpoints json, heads json, head json
        ) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO audit_log
                SELECT * FROM json_populate_recordset(NULL::audit_log, log_rows);
            INSERT INTO audit_tree_node (position, hash)
                SELECT position, hash
                FROM json_populate_recordset(NULL::audit_tree_node, nodes);
            IF checkpoints IS NOT NULL THEN
                INSERT INTO audit_checkpoint (log_id, log_hash, created_at, reason, mac)
                    SELECT log_id, log_hash, created_at, reason, mac
                    FROM json_populate_recordset(NULL::audit_checkpoint, checkpoints);
            END IF;
            IF heads IS NOT NULL THEN
                INSERT INTO audit_tree_head (tree_size, root_hash, created_at, key_id, checkpoint)
                    SELECT tree_size, root_hash, created_at, key_id, checkpoint
                    FROM json_populate_recordset(NULL::audit_tree_head, heads);
            END IF;
            UPDATE audit_chain AS chain SET
                last_id = new.last_id,
                last_hash = new.last_hash,
                last_created_at = new.last_created_at,
                since_checkpoint = new.since_checkpoint,
                tree_frontier = new.tree_frontier,
                tree_head_at = new.tree_head_at
            FROM json_populate_record(NULL::audit_chain, head) AS new
            WHERE chain.id = 1;
        END
        $$
        """
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION {SIGNATURE}")
