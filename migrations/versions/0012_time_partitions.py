"""Time partitions (issue 21): on PostgreSQL `audit_log` becomes a table partitioned by month
on `created_at`; SQLite keeps the plain table.

The existing trail is converted in the migration's one transaction: a new partitioned table
(LIKE audit_log INCLUDING DEFAULTS), a partition for every month holding rows plus this month
and the next three (`flask audit maintain` makes the later ones) and a DEFAULT partition, the
rows copied by INSERT ... SELECT in id order (the append-only triggers refuse the DELETE that
moving them would need, so the old table is dropped whole instead), the keys and indexes built
under temporary names, then the old table dropped, the new one renamed to `audit_log` and its
keys and indexes given their names, and the triggers made. The trail has no sequence since
migration 0003 (the writer gives ids out under the chain's lock): nothing to re-own.

Locks: EXCLUSIVE on the old table from the start (appends wait, reads go on; the writers'
5 s lock timeout sends their events to the spool, replayed afterwards), ACCESS EXCLUSIVE only
for the drop and the renames at the end. Its cost on 10M rows and the procedure for a live
service: docs/operations.md, "Time partitions", and docs/benchmarks.md.

Both unique keys include the partition key, as PostgreSQL requires: PRIMARY KEY (id,
created_at) and UNIQUE (event_id, created_at). Ids stay unique all the same (the writer gives
each out once, under the chain's lock), and a replay is still written once: the writer looks
the event ids up under that lock (chain.existing_event_ids) before it appends.

The downgrade converts back to the plain table the same way.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from datetime import UTC, datetime

from alembic import op

# One definition of a month's partition for this migration and `flask audit maintain`: both
# must make the same thing (its trigger, its settings).
from backend.audit import partitions

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

AHEAD = 3
NEW = "audit_log_new"
APPEND_ONLY = "{} is append-only: {} is not allowed (retention: flask audit purge)"
HELD = "{} is under a legal hold: no row may be deleted while one stands (flask audit hold list)"
HOLD_CHECK = f"""
                IF EXISTS (SELECT 1 FROM audit_hold WHERE released_at IS NULL) THEN
                    RAISE EXCEPTION '{HELD.format("%")}', {{table}}
                        USING ERRCODE = 'insufficient_privilege';
                END IF;"""
# The indexes of the trail as migrations 0004-0008 left them (the models' list, frozen here).
INDEXES = {
    "ix_audit_log_created_at_id": "created_at, id",
    **{
        f"ix_audit_log_{column}_created_at_id": f'"{column}", created_at, id'
        for column in ("user", "ip", "level", "source", "event", "outcome")
    },
    "ix_audit_log_target_created_at_id": "target, created_at, id",
    "ix_audit_log_target_type_created_at_id": "target_type, created_at, id",
    "ix_audit_log_user_level_created_at_id": '"user", level, created_at, id',
    "ix_audit_log_track_trgm_block": "USING gin (track gin_trgm_ops, (id >> 20))",
}
ANALYZE_EVERY = "autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 100000"


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    _append_only_function(table="COALESCE(TG_ARGV[0], TG_TABLE_NAME)")
    _replace_table("PARTITION BY RANGE (created_at)", _make_partitions, "(id, created_at)")


def _make_partitions(bind) -> None:
    """The months holding rows, this month and AHEAD more, and the default partition."""
    months = set(
        bind.exec_driver_sql(
            "SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date"
            " FROM audit_log"
        ).scalars()
    )
    months |= {p.start.date() for p in partitions.months_due(datetime.now(UTC), AHEAD)}
    for statement in partitions.default_partition_statements(NEW):
        op.execute(statement)
    for month in sorted(months):
        for statement in partitions.partition_statements(partitions.month_partition(month), NEW):
            op.execute(statement)


def _replace_table(partitioning: str, make_partitions, primary_key: str) -> None:
    """Copy the trail into a new table (`partitioning`: its PARTITION BY clause, or empty) in
    id order, with its keys and indexes, then put it in the old one's place."""
    # Appends wait from here to the commit; reads go on until the old table is dropped.
    op.execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")
    op.execute(
        f"CREATE TABLE {NEW} (LIKE audit_log INCLUDING DEFAULTS INCLUDING STORAGE) {partitioning}"
    )
    make_partitions(op.get_bind())
    op.execute(f"INSERT INTO {NEW} SELECT * FROM audit_log ORDER BY id")
    unique_event = "(event_id, created_at)" if "created_at" in primary_key else "(event_id)"
    op.execute(f"ALTER TABLE {NEW} ADD CONSTRAINT {NEW}_pkey PRIMARY KEY {primary_key}")
    op.execute(f"ALTER TABLE {NEW} ADD CONSTRAINT {NEW}_event_id UNIQUE {unique_event}")
    for name, columns in INDEXES.items():
        how = columns if columns.startswith("USING") else f"({columns})"
        op.execute(f"CREATE INDEX {name}__new ON {NEW} {how}")
    # The planner's statistics, before the new table takes the name (autovacuum never analyzes
    # a partitioned parent); renaming keeps them.
    op.execute(f"ANALYZE {NEW}")
    op.execute("DROP TABLE audit_log")
    op.execute(f"ALTER TABLE {NEW} RENAME TO audit_log")
    op.execute(f"ALTER TABLE audit_log RENAME CONSTRAINT {NEW}_pkey TO audit_log_pkey")
    op.execute(f"ALTER TABLE audit_log RENAME CONSTRAINT {NEW}_event_id TO uq_audit_log_event_id")
    for name in INDEXES:
        op.execute(f"ALTER INDEX {name}__new RENAME TO {name}")
    op.execute("""CREATE TRIGGER audit_log_append_only
                  BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
                  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""")


def _append_only_function(table: str) -> None:
    """audit_append_only() of migrations 0003 and 0007, naming `table` (an SQL expression) in
    its refusals: a partition's trigger passes 'audit_log' as its argument."""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_purge_permit) THEN
                {HOLD_CHECK.format(table=table)}
                RETURN NULL;
            END IF;
            RAISE EXCEPTION '{APPEND_ONLY.format("%", "%")}', {table}, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$""")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    _replace_table("", lambda bind: None, "(id)")
    op.execute(f"ALTER TABLE audit_log SET ({ANALYZE_EVERY})")
    _append_only_function(table="TG_TABLE_NAME")
