"""Audit guarantees (issue 5): hash chain, checkpoints, append-only triggers.

Existing rows are renumbered gaplessly in (created_at, id) order and chained, so a trail
written before this migration verifies like one written after it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import hashlib
import json
import uuid
from datetime import UTC

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
# A frozen copy of backend.audit.chain.row_hash (chain version 1): a migration must not change
# meaning when the application code does.
HASHED_FIELDS = ("id", "created_at", "event_id", "source", "event", "level", "user", "ip",
                 "track", "method", "path", "status", "request_id", "user_agent")
APPEND_ONLY = "{} is append-only: {} is not allowed (retention: flask audit purge)"


def _row_hash(row: dict, prev_hash: str) -> str:
    values = []
    for name in HASHED_FIELDS:
        value = row[name]
        if name == "created_at":
            value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif name == "event_id":
            value = str(value)
        values.append(value)
    canonical = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode() + prev_hash.encode()).hexdigest()


def upgrade():
    bind = op.get_bind()
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("last_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("since_checkpoint", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("log_id", sa.BigInteger(), nullable=False),
        sa.Column("log_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_checkpoint_log_id", "audit_checkpoint", ["log_id"])
    op.create_table("audit_purge_permit", sa.Column("id", sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint("id"))

    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("event_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    head = _chain_existing_rows(bind)
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("event_id", existing_type=sa.Uuid(), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_audit_log_event_id", ["event_id"])
    op.bulk_insert(sa.table("audit_chain", sa.column("id"), sa.column("last_id"),
                            sa.column("last_hash"), sa.column("last_created_at"),
                            sa.column("since_checkpoint")),
                   [{"id": 1, **head, "since_checkpoint": 0}])

    if bind.dialect.name == "postgresql":
        # The writer gives out ids under the chain's lock; a sequence would only invite gaps.
        op.alter_column("audit_log", "id", server_default=None, existing_type=sa.BigInteger())
        op.execute("DROP SEQUENCE IF EXISTS audit_log_id_seq")
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def _chain_existing_rows(bind) -> dict:
    types = {"created_at": sa.DateTime(timezone=True), "event_id": sa.Uuid()}
    log = sa.table("audit_log", *(sa.column(name, types.get(name))
                                  for name in (*HASHED_FIELDS, "prev_hash", "hash")))
    rows = bind.execute(sa.select(log).order_by(log.c.created_at, log.c.id)).mappings().all()
    bind.execute(sa.update(log).values(id=-log.c.id))  # out of the way of the new ids
    prev_hash, last_created_at = GENESIS, None
    for new_id, row in enumerate(rows, start=1):
        row = dict(row)
        old_id = row["id"]
        created_at = row["created_at"]
        if created_at.tzinfo is None:  # SQLite keeps naive UTC
            created_at = created_at.replace(tzinfo=UTC)
        row.update(id=new_id, created_at=created_at, event_id=uuid.uuid4())
        row_hash = _row_hash(row, prev_hash)
        bind.execute(sa.update(log).where(log.c.id == -old_id).values(
            id=new_id, event_id=row["event_id"], prev_hash=prev_hash, hash=row_hash))
        prev_hash, last_created_at = row_hash, row["created_at"]
    return {"last_id": len(rows), "last_hash": prev_hash, "last_created_at": last_created_at}


def _postgresql_triggers():
    op.execute(f"""
        CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_purge_permit) THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION '{APPEND_ONLY.format("%", "%")}', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$""")
    for table in ("audit_log", "audit_checkpoint"):
        op.execute(f"""CREATE TRIGGER {table}_append_only
                       BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
                       FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""")


def _sqlite_triggers():
    for table in ("audit_log", "audit_checkpoint"):
        op.execute(f"""CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
                       BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY.format(table, "UPDATE")}'); END""")
        op.execute(f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
                       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_permit)
                       BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY.format(table, "DELETE")}'); END""")


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in ("audit_log", "audit_checkpoint"):
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute("DROP FUNCTION audit_append_only()")
        op.execute("CREATE SEQUENCE audit_log_id_seq OWNED BY audit_log.id")
        op.execute("SELECT setval('audit_log_id_seq', COALESCE(MAX(id), 0) + 1, false) "
                   "FROM audit_log")
        op.alter_column("audit_log", "id", existing_type=sa.BigInteger(),
                        server_default=sa.text("nextval('audit_log_id_seq')"))
    else:
        for table in ("audit_log", "audit_checkpoint"):
            op.execute(f"DROP TRIGGER {table}_no_update")
            op.execute(f"DROP TRIGGER {table}_no_delete")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_log_event_id", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("event_id")
    op.drop_table("audit_purge_permit")
    op.drop_index("ix_audit_checkpoint_log_id", table_name="audit_checkpoint")
    op.drop_table("audit_checkpoint")
    op.drop_table("audit_chain")
