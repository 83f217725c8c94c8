"""Sink cursors: where the relay (`flask audit relay`) stands in the trail for each sink.

One row a sink, keyed by the sink's name in AUDIT_SINKS_FILE: the last row id delivered (the
relay moves it only after the sink took the batch), and what `GET /v1/sinks` reports.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "audit_sink_cursor",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("delivered_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade():
    op.drop_table("audit_sink_cursor")
