"""Login security (issue 6): user status and whatever lockout needs.

Users get `disabled_at` and `password_changed_at`; `login_throttles` holds the failed-login
counters and lockouts of (account, address) pairs, addresses and accounts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# backend.db_types.UTCDateTime stores through this type (see 0001).
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade():
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled_at", UTC_DATETIME, nullable=True))
        batch.add_column(sa.Column("password_changed_at", UTC_DATETIME, nullable=True))
    op.create_table(
        "login_throttles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("lockouts", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", UTC_DATETIME, nullable=True),
        sa.Column("locked_until", UTC_DATETIME, nullable=True),
        sa.Column("last_success_at", UTC_DATETIME, nullable=True),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_login_throttles_expires_at", "login_throttles", ["expires_at"])


def downgrade():
    op.drop_index("ix_login_throttles_expires_at", table_name="login_throttles")
    op.drop_table("login_throttles")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_changed_at")
        batch.drop_column("disabled_at")
