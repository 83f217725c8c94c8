"""Tiles of the Merkle tree (issue 18's proof latency): `audit_tree_tile`, a copy of the stored
subtrees 5 levels at a time (backend/audit/merkle.py, "tiles"), so that a proof of a row in a
tree of 10M rows reads 5 rows of a 635 MB table and about 14 of the newest nodes, where it
read about 36 nodes, most on a page of their own of a 2.5 GB table.

The tiles of an existing tree are built here from its stored subtrees (on PostgreSQL one
INSERT ... SELECT a tile level, in the server: 46 s at 10M rows, docs/benchmarks.md); the
writer stores each new one in the transaction of the rows that complete it. Append-only,
like the nodes: a purge keeps them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from backend.audit import tiles

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLE = "audit_tree_tile"
APPEND_ONLY = "{} is append-only: {} is not allowed"


def upgrade():
    op.create_table(
        TABLE,
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hashes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("position"),
    )
    bind = op.get_bind()
    size = bind.scalar(sa.text("SELECT last_id FROM audit_chain WHERE id = 1")) or 0
    tiles.build(bind, size)
    if bind.dialect.name == "postgresql":  # the function of migration 0003
        op.execute(f"""CREATE TRIGGER {TABLE}_append_only
                       BEFORE UPDATE OR DELETE OR TRUNCATE ON {TABLE}
                       FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""")
    else:
        op.execute(f"""CREATE TRIGGER {TABLE}_no_update BEFORE UPDATE ON {TABLE}
                       BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY.format(TABLE, "UPDATE")}');
                       END""")
        op.execute(f"""CREATE TRIGGER {TABLE}_no_delete BEFORE DELETE ON {TABLE}
                       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_permit)
                       BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY.format(TABLE, "DELETE")}');
                       END""")


def downgrade():
    op.drop_table(TABLE)
