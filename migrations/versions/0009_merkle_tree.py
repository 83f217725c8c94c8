"""Verifiable by anyone (issue 18): the Merkle tree over the trail, signed tree heads, and the
public halves of their signing keys.

The tree of an existing trail is built here, in id order, BATCH rows at a time (each row's
hash read once, about two tree hashes stored a row: 484 s for 10M rows, 203 MB at most, on
the 2-core development machine, docs/benchmarks.md). A trail whose first rows were purged
before this migration cannot have its tree rebuilt (the purged rows' hashes are gone): the
migration stops with a message rather than build a tree no proof could match.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

# RFC 9162's hashing cannot change, so the migration may share the app's implementation.
from backend.audit import merkle

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 50_000
TABLES = ("audit_tree_node", "audit_tree_head")
APPEND_ONLY = "{} is append-only: {} is not allowed"


def upgrade():
    op.create_table(
        "audit_tree_node",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("position"),
    )
    op.create_table(
        "audit_tree_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=8), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_tree_head_tree_size", "audit_tree_head", ["tree_size"])
    op.create_table(
        "audit_signing_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_id"),
    )
    with op.batch_alter_table("audit_chain") as batch:
        batch.add_column(sa.Column("tree_frontier", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("tree_head_at", sa.DateTime(timezone=True), nullable=True))
    _build_tree(op.get_bind())
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:  # the function of migration 0003 (0007: holds)
            op.execute(f"""CREATE TRIGGER {table}_append_only
                           BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
                           FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""")
    else:
        for table in TABLES:
            op.execute(f"""CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
                           BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY.format(table, "UPDATE")}');
                           END""")
            op.execute(f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
                           WHEN NOT EXISTS (SELECT 1 FROM audit_purge_permit)
                           BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY.format(table, "DELETE")}');
                           END""")


def _build_tree(bind) -> None:
    """The tree of the rows already there, and its frontier in the chain's head."""
    log = sa.table("audit_log", sa.column("id", sa.BigInteger()), sa.column("hash"))
    node = sa.table("audit_tree_node", sa.column("position"), sa.column("hash"))
    first = bind.scalar(sa.select(sa.func.min(log.c.id)))
    if first is None:
        last = bind.scalar(sa.text("SELECT last_id FROM audit_chain WHERE id = 1")) or 0
        if last:
            raise RuntimeError(
                f"migration 0009: the trail's rows 1-{last} were purged; its Merkle tree"
                " cannot be rebuilt without them"
            )
        return
    if first != 1:
        raise RuntimeError(
            f"migration 0009: the trail's rows 1-{first - 1} were purged; its Merkle tree"
            " cannot be rebuilt without them"
        )
    frontier, size = [], 0
    while True:
        hashes = bind.scalars(
            sa.select(log.c.hash).where(log.c.id > size).order_by(log.c.id).limit(BATCH)
        ).all()
        if not hashes:
            break
        size, completed = merkle.append(frontier, size, map(merkle.leaf_hash, hashes))
        bind.execute(
            sa.insert(node), [{"position": at, "hash": value.hex()} for at, value in completed]
        )
    bind.execute(
        sa.text("UPDATE audit_chain SET tree_frontier = :frontier WHERE id = 1"),
        {"frontier": merkle.pack(frontier)},
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_column("tree_head_at")
        batch.drop_column("tree_frontier")
    op.drop_table("audit_signing_key")
    op.drop_index("ix_audit_tree_head_tree_size", table_name="audit_tree_head")
    op.drop_table("audit_tree_head")
    op.drop_table("audit_tree_node")
