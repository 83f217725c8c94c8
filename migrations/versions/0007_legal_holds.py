"""Legal holds: the audit_hold table, and triggers that refuse to delete rows (of the trail and
its checkpoints) while one stands.

`flask audit purge` checks the holds before it starts; the triggers make the database say no
as well, so a hold placed while a purge runs stops its next batch, and no other DELETE under a
purge permit gets past a hold either.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PROTECTED = ("audit_log", "audit_checkpoint")
APPEND_ONLY = "{} is append-only: {} is not allowed (retention: flask audit purge)"
HELD = ("{} is under a legal hold: no row may be deleted while one stands"
        " (flask audit hold list)")


def upgrade():
    op.create_table(
        "audit_hold",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("placed_by", sa.String(length=255), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("uq_audit_hold_standing_name", "audit_hold", ["name"], unique=True,
                    postgresql_where=sa.text("released_at IS NULL"),
                    sqlite_where=sa.text("released_at IS NULL"))
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_function(hold_check=f"""
                IF EXISTS (SELECT 1 FROM audit_hold WHERE released_at IS NULL) THEN
                    RAISE EXCEPTION '{HELD.format("%")}', TG_TABLE_NAME
                        USING ERRCODE = 'insufficient_privilege';
                END IF;""")
    else:
        for table in PROTECTED:
            op.execute(f"""CREATE TRIGGER {table}_no_delete_under_hold BEFORE DELETE ON {table}
                           WHEN EXISTS (SELECT 1 FROM audit_hold WHERE released_at IS NULL)
                           BEGIN SELECT RAISE(ABORT, '{HELD.format(table)}'); END""")


def _postgresql_function(hold_check: str):
    """audit_append_only() of migration 0003, with `hold_check` run before a permitted DELETE."""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_purge_permit) THEN
                {hold_check}
                RETURN NULL;
            END IF;
            RAISE EXCEPTION '{APPEND_ONLY.format("%", "%")}', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$""")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_function(hold_check="")
    else:
        for table in PROTECTED:
            op.execute(f"DROP TRIGGER {table}_no_delete_under_hold")
    op.drop_index("uq_audit_hold_standing_name", table_name="audit_hold")
    op.drop_table("audit_hold")
