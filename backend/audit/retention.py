"""Retention that cannot destroy the trail: guards, legal holds, dry runs, resumable purges.

`flask audit purge --before DATE` deletes the oldest rows, a batch a transaction, each batch
first signing a purge checkpoint of its last row, so the trail verifies after every batch: a
purge killed half way (SIGKILL, a database restart) leaves a shorter but verifiable trail, and
running it again deletes the rest. On the partitioned trail (PostgreSQL, migration 0012) a
month entirely before the date is detached and dropped whole instead (`purge_step`), after the
same signed checkpoint; rows are deleted only in the boundary month and the default partition.

Before anything is deleted, `refusal` checks the date (not in the future, not later than
AUDIT_MIN_RETENTION_DAYS ago) and the legal holds (while any stands, nothing goes). Each
attempt, refused or not, is recorded as a `trail.purge` row before a row is deleted. The
database enforces the holds too: its append-only triggers refuse every DELETE of `audit_log`
and `audit_checkpoint` while a hold stands (migration 0007), so a hold placed while a purge
runs stops it.
"""

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from backend.audit import chain, partitions
from backend.clock import rfc3339, utcnow
from backend.models import Checkpoint, Hold, Log, PurgePermit

PURGE_BATCH = 10_000


@dataclass(frozen=True)
class PurgePlan:
    """What a purge before `before` would delete: `rows` rows, ids `first_id` to `last_id`,
    created from `oldest` to `newest` (ids follow creation time, so they are the oldest rows)."""

    before: datetime
    rows: int
    first_id: int | None = None
    last_id: int | None = None
    oldest: datetime | None = None
    newest: datetime | None = None

    def describe(self) -> str:
        """`3 rows (ids 1-3, created 2025-...Z to 2025-...Z)`, or `no rows`."""
        if not self.rows:
            return "no rows"
        return (
            f"{self.rows} row{'' if self.rows == 1 else 's'} (ids {self.first_id}-"
            f"{self.last_id}, created {rfc3339(self.oldest)} to {rfc3339(self.newest)})"
        )


def plan(connection: sa.Connection, before: datetime) -> PurgePlan:
    """What a purge of the rows created before `before` would delete, as the table is now."""
    last_id = connection.scalar(sa.select(sa.func.max(Log.id)).where(Log.created_at < before))
    if last_id is None:
        return PurgePlan(before, 0)
    first = connection.execute(sa.select(Log.id, Log.created_at).order_by(Log.id).limit(1)).one()
    newest = connection.scalar(sa.select(Log.created_at).where(Log.id == last_id))
    # Counted, not the span of the ids: what the DELETE will really take, gaps and all.
    rows = connection.scalar(sa.select(sa.func.count()).select_from(Log).where(Log.id <= last_id))
    return PurgePlan(before, rows, first.id, last_id, first.created_at, newest)


def refusal(connection: sa.Connection, before: datetime, min_retention_days: int) -> str | None:
    """Why a purge of the rows before `before` may not run now, or None when it may."""
    now = utcnow()
    if before > now:
        return f"{rfc3339(before)} is in the future"
    keep_from = now - timedelta(days=min_retention_days)
    if before > keep_from:
        return (
            f"{rfc3339(before)} is within the minimum retention of {min_retention_days}"
            f" days (AUDIT_MIN_RETENTION_DAYS): the earliest date allowed now is"
            f" {rfc3339(keep_from)}"
        )
    standing = [hold.name for hold in standing_holds(connection)]
    if standing:
        return f"legal hold{'s' if len(standing) > 1 else ''} standing: {', '.join(standing)}"
    return None


def purge_batch(connection: sa.Connection, key: bytes, up_to: int, batch: int = PURGE_BATCH) -> int:
    """Delete the oldest rows up to id `up_to` (at most `batch` of them) in the caller's
    transaction; return how many. A signed checkpoint of the last deleted row is written
    first, so the first row left still verifies. The one sanctioned way past the triggers."""
    first = connection.scalar(sa.select(sa.func.min(Log.id)))
    if first is None or first > up_to:
        return 0
    last = min(up_to, first + batch - 1)
    row = connection.execute(sa.select(Log.hash, Log.created_at).where(Log.id == last)).one()
    connection.execute(
        sa.insert(Checkpoint), chain.sign(key, last, row.hash, row.created_at, "purge")
    )
    connection.execute(sa.insert(PurgePermit).values(id=1))
    deleted = connection.execute(sa.delete(Log).where(Log.id <= last)).rowcount
    connection.execute(sa.delete(PurgePermit))
    return deleted


# -- whole partitions (PostgreSQL) --------------------------------------------------------------

# How long dropping a month waits for its locks: DETACH takes the trail's ACCESS EXCLUSIVE lock
# for a moment, and appends queue behind it while it waits (the writer gives up after 5 s).
DETACH_LOCK_TIMEOUT = "2s"


def purge_step(connection: sa.Connection, key: bytes, plan: PurgePlan, batch: int) -> int | None:
    """One transaction of a purge: the oldest month's partition dropped whole when it lies
    entirely before the cut-off and holds the oldest rows, else a batch of the oldest rows
    deleted (the boundary month, the default partition, SQLite). The rows it took, or None
    when nothing is left to take."""
    if partitions.is_partitioned(connection):
        dropped = drop_oldest_partition(connection, key, plan)
        if dropped is not None:
            return dropped
    deleted = purge_batch(connection, key, plan.last_id, batch)
    return deleted or None


def drop_oldest_partition(connection: sa.Connection, key: bytes, plan: PurgePlan) -> int | None:
    """Detach and drop the oldest month's partition if it ends by the cut-off and its rows are
    the oldest of the trail (ids are in time order, so they are the first ids left); first a
    signed purge checkpoint of its last row, as purge_batch writes. The rows dropped, or None.

    DROP is not DELETE: the triggers that refuse a DELETE under a legal hold do not fire. So
    the holds are locked against `hold add` (SHARE ROW EXCLUSIVE conflicts with its INSERT)
    until this transaction ends, and checked under that lock."""
    oldest = next(iter(partitions.month_partitions(connection)), None)
    if oldest is None or oldest.end > plan.before:
        return None
    span = connection.execute(
        sa.text(f"SELECT min(id), max(id) FROM {oldest.name}")  # the partition's ids
    ).one()
    first = connection.scalar(sa.select(sa.func.min(Log.id)))
    if span[0] is not None and (span[0] != first or span[1] > plan.last_id):
        return None  # older rows elsewhere (the default partition) go first, by rows
    connection.exec_driver_sql("LOCK TABLE audit_hold IN SHARE ROW EXCLUSIVE MODE")
    standing = [hold.name for hold in standing_holds(connection)]
    if standing:
        raise HoldError(
            f"legal hold{'s' if len(standing) > 1 else ''} standing: {', '.join(standing)};"
            f" {oldest.name} not dropped"
        )
    if span[0] is not None:
        row = connection.execute(sa.select(Log.hash, Log.created_at).where(Log.id == span[1]))
        row = row.one()
        connection.execute(
            sa.insert(Checkpoint), chain.sign(key, span[1], row.hash, row.created_at, "purge")
        )
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
    connection.exec_driver_sql(f"ALTER TABLE audit_log DETACH PARTITION {oldest.name}")
    connection.exec_driver_sql(f"DROP TABLE {oldest.name}")
    # Ids within a month are consecutive (gapless, in time order): no count of the rows.
    return 0 if span[0] is None else span[1] - span[0] + 1


# -- legal holds ------------------------------------------------------------------------------


class HoldError(Exception):
    """A hold command that cannot be carried out; the message is one line for the operator."""


def standing_holds(connection: sa.Connection) -> list[Hold]:
    """The holds placed and not released, oldest first."""
    return list(
        connection.execute(sa.select(Hold).where(Hold.released_at.is_(None)).order_by(Hold.id))
    )


def all_holds(connection: sa.Connection) -> list[Hold]:
    """Every hold ever placed, released ones too, oldest first."""
    return list(connection.execute(sa.select(Hold).order_by(Hold.id)))


def place_hold(connection: sa.Connection, name: str, reason: str) -> None:
    """Place the hold NAME; a hold of that name must not be standing already."""
    name, reason = name.strip(), reason.strip()
    if not name or len(name) > Hold.name.type.length:
        raise HoldError(f"a hold's name must be 1 to {Hold.name.type.length} characters")
    if not reason:
        raise HoldError("a hold needs a reason (--reason), e.g. the case or ticket it serves")
    if _standing(connection, name) is not None:
        raise HoldError(f"a hold named {name!r} is already standing")
    connection.execute(
        sa.insert(Hold).values(name=name, reason=reason, placed_at=utcnow(), placed_by=operator())
    )


def release_hold(connection: sa.Connection, name: str) -> None:
    """Release the standing hold NAME (it stays listed, with when and by whom)."""
    name = name.strip()
    hold_id = _standing(connection, name)
    if hold_id is None:
        raise HoldError(f"no hold named {name!r} is standing")
    connection.execute(
        sa.update(Hold)
        .where(Hold.id == hold_id)
        .values(released_at=utcnow(), released_by=operator())
    )


def _standing(connection: sa.Connection, name: str) -> int | None:
    return connection.scalar(
        sa.select(Hold.id).where(Hold.name == name, Hold.released_at.is_(None))
    )


def operator() -> str:
    """`user@host`: the OS account that ran the command, for the record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
