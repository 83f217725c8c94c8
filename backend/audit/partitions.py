"""The trail's monthly partitions on PostgreSQL (migration 0012); SQLite keeps one plain table.

`audit_log` is partitioned by RANGE (created_at), one partition a calendar month (UTC), named
`audit_log_pYYYY_MM`, plus `audit_log_default`, which takes any row no month's partition
covers (a spooled event replayed from a month that was never made or was purged, a clock far
ahead): an insert never fails for lack of a partition, and nothing is lost. Native declarative
partitioning, not pg_partman: the app needs only "make the next months" and "drop whole months
before a date", which are a few statements here, where pg_partman is a server extension to
install (superuser, a background worker or cron) and would drop months without knowing the
legal holds (docs/operations.md, "Time partitions").

`maintain` makes the partitions of this month and AUDIT_PARTITIONS_AHEAD months ahead; it runs
at boot and as `flask audit maintain` (cron, or beside the relay). A month is made as a plain
table with the partition's CHECK constraint, then ATTACHed: ATTACH PARTITION takes SHARE UPDATE
EXCLUSIVE on the parent, which no insert or read waits for (CREATE TABLE ... PARTITION OF
would take ACCESS EXCLUSIVE, queueing every append behind the longest running export).
"""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa

PARENT = "audit_log"
DEFAULT = "audit_log_default"
PARTITION_NAME = re.compile(r"^audit_log_(p\d{4}_\d{2}|default)$")
PARTITION_IN_TEXT = re.compile(r"\baudit_log_(?:p\d{4}_\d{2}|default)\b")
# Any 64-bit number, the same in every copy of the service: "audit_pm" in ASCII.
MAINTAIN_LOCK = 0x6175_6469_745F_706D
# Each partition's own autovacuum settings (a partitioned parent takes none): migration 0006's
# reason holds per month, the planner must see the newest block of ids grow.
ANALYZE_EVERY = "autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 100000"
# The append-only trigger of each partition (migration 0012). A statement-level trigger of the
# parent fires only for statements that name the parent, and PostgreSQL clones row triggers to
# partitions, never statement or TRUNCATE triggers: a DELETE, UPDATE or TRUNCATE naming a
# partition needs its own. Its argument makes the refusal name the trail, not the partition.
PARTITION_TRIGGER = (
    "CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE"
    " ON {name} FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only('audit_log')"
)


@dataclass(frozen=True)
class Partition:
    """One month's partition: rows created from `start` (inclusive) to `end` (exclusive)."""

    name: str
    start: datetime
    end: datetime


def month_of(moment: datetime | date) -> date:
    """The first day of the (UTC) month holding `moment`."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def add_months(month: date, count: int) -> date:
    """The first day of the month `count` months after `month`'s."""
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def month_partition(month: date) -> Partition:
    """The partition of `month` (any day of it)."""
    month = month_of(month)
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end_month = add_months(month, 1)
    end = datetime(end_month.year, end_month.month, 1, tzinfo=UTC)
    return Partition(f"audit_log_p{month.year:04d}_{month.month:02d}", start, end)


def is_partition(name: str) -> bool:
    """Whether a table name is one of the trail's partitions (the default one too)."""
    return bool(PARTITION_NAME.match(name))


def naming_the_trail(message: str) -> str:
    """A database message with the partition it names (`new row for relation
    "audit_log_p2026_12" violates ...`) put back as the trail, `audit_log`: a partition is the
    table's storage, not what an operator or a test knows the table by."""
    return PARTITION_IN_TEXT.sub("audit_log", message)


def is_partitioned(connection: sa.Connection) -> bool:
    """Whether the trail is a partitioned table here (PostgreSQL at migration 0012 or later)."""
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.exec_driver_sql(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_log')"
    ).scalar()
    return kind == "p"


def month_partitions(connection: sa.Connection) -> list[Partition]:
    """The trail's monthly partitions, oldest first (the default partition is not one)."""
    rows = connection.exec_driver_sql(
        "SELECT child.relname FROM pg_inherits"
        " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
        " WHERE pg_inherits.inhparent = to_regclass('audit_log')"
    ).scalars()
    months = sorted(date(int(name[11:15]), int(name[16:18]), 1) for name in rows if name != DEFAULT)
    return [month_partition(month) for month in months]


def partition_statements(partition: Partition, parent: str = PARENT) -> list[str]:
    """Make one month's partition and attach it to `parent` (the trail; the migration's new
    table). The CHECK constraint spares ATTACH a scan of the new table; it goes once attached."""
    name, start, end = partition.name, partition.start.isoformat(), partition.end.isoformat()
    bound = f"created_at >= '{start}' AND created_at < '{end}'"
    return [
        f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS) WITH ({ANALYZE_EVERY})",
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK ({bound})",
        f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM ('{start}') TO ('{end}')",
        f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound",
        PARTITION_TRIGGER.format(name=name),
    ]


def default_partition_statements(parent: str) -> list[str]:
    """Make the default partition of `parent` (the migration's new, empty table)."""
    return [
        f"CREATE TABLE {DEFAULT} PARTITION OF {parent} DEFAULT WITH ({ANALYZE_EVERY})",
        PARTITION_TRIGGER.format(name=DEFAULT),
    ]


def months_due(today: date, ahead: int) -> list[Partition]:
    """The partitions `maintain` keeps: this month's and `ahead` months after it."""
    this_month = month_of(today)
    return [month_partition(add_months(this_month, count)) for count in range(ahead + 1)]


@dataclass(frozen=True)
class Maintenance:
    """What `maintain` did: the partitions it made, and months it could not make because rows
    of theirs already sit in the default partition (they stay there, found by every query)."""

    made: list[str]
    kept_in_default: list[str]


def maintain(connection: sa.Connection, now: datetime, ahead: int) -> Maintenance:
    """Make the missing partitions of `months_due`, in the caller's transaction (as the tables'
    owner). Two at once are safe: a transaction-scoped advisory lock orders them, and the
    second finds the months made."""
    connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MAINTAIN_LOCK)))
    existing = {partition.name for partition in month_partitions(connection)}
    made, kept = [], []
    for partition in months_due(now, ahead):
        if partition.name in existing:
            continue
        if _in_default(connection, partition):
            # ATTACH would fail on them: the month stays in the default partition.
            kept.append(partition.name)
            continue
        for statement in partition_statements(partition):
            connection.exec_driver_sql(statement)
        made.append(partition.name)
    return Maintenance(made, kept)


def _in_default(connection: sa.Connection, partition: Partition) -> bool:
    return bool(
        connection.execute(
            sa.text(
                f"SELECT EXISTS (SELECT 1 FROM {DEFAULT}"
                " WHERE created_at >= :start AND created_at < :end)"
            ),
            {"start": partition.start, "end": partition.end},
        ).scalar()
    )
