"""Where the trail starts, without reading it (issue 18's proof latency): a partial index of
the purge checkpoints' rows, `ix_audit_checkpoint_purge`.

A purge deletes the oldest rows, a prefix of the ids, each batch (or month) after a signed
checkpoint of its last row, in the same transaction (backend/audit/retention.py). So the rows
left are those after the newest purge checkpoint, up to the chain's head, and whether a row
is there for a viewer who sees every row needs neither the row nor the month partitions of
`audit_log` (a lookup by id alone probes every month's index: backend/audit/listing.py,
`ROW_ID`). With this index that newest purge checkpoint is one index entry, where the
checkpoints' `log_id` index would be walked past every periodic checkpoint (10,000 at 10M
rows) to find none.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

PURGE = sa.text("reason = 'purge'")


def upgrade():
    op.create_index(
        "ix_audit_checkpoint_purge",
        "audit_checkpoint",
        ["log_id"],
        postgresql_where=PURGE,
        sqlite_where=PURGE,
    )


def downgrade():
    op.drop_index("ix_audit_checkpoint_purge", table_name="audit_checkpoint")
