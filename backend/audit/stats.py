"""Counting the trail per time bucket and level (GET /v1/logs/stats), over a bounded window."""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from backend.audit.listing import matching
from backend.audit.reads import reading_engine
from backend.db_types import UTCDateTime
from backend.models import LEVELS, Log, User

BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# Without `since`: the last 48 hours, or the last 90 days, as whole buckets up to `until`.
DEFAULT_BUCKETS = {"hour": 48, "day": 90}
# A chart has no room for more bars, and the work is bounded by the time range it covers.
MAX_BUCKETS = 1000


class InvalidRange(ValueError):
    """The time range of a stats query cannot be counted; `field` is the parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def bucket_floor(moment: datetime, bucket: str) -> datetime:
    """The start of the UTC bucket holding `moment`."""
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def window(
    bucket: str, since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The [since, until) that a stats query counts: `until` defaults to `now`, and `since` to
    the start of the DEFAULT_BUCKETS buckets that end with the one holding `until`'s last
    instant. A range over more than MAX_BUCKETS buckets is refused (InvalidRange)."""
    step = BUCKETS[bucket]
    try:
        until = now if until is None else until
        last = bucket_floor(until - timedelta(microseconds=1), bucket)
        if since is None:
            since = last - (DEFAULT_BUCKETS[bucket] - 1) * step
    except OverflowError:  # e.g. until=0001-01-01T00:00:00Z: no bucket before it
        raise InvalidRange("until", "is out of range") from None
    if until <= since:
        raise InvalidRange("since", "must be earlier than until (which is now unless given)")
    buckets = (last - bucket_floor(since, bucket)) // step + 1
    if buckets > MAX_BUCKETS:
        raise InvalidRange(
            "since",
            f"the range holds {buckets} {bucket} buckets, more than"
            f" {MAX_BUCKETS}: narrow it, or count by a longer bucket",
        )
    return since, until


def bucket_starts(bucket: str, since: datetime, until: datetime) -> list[datetime]:
    """The start of every bucket that [since, until) overlaps, oldest first."""
    step, start = BUCKETS[bucket], bucket_floor(since, bucket)
    last = bucket_floor(until - timedelta(microseconds=1), bucket)
    return [start + number * step for number in range((last - start) // step + 1)]


def _bucket_of(bucket: str, dialect: str) -> sa.ColumnElement[datetime]:
    """The UTC start of each row's bucket, computed by the database. The unit is a literal,
    not a parameter: PostgreSQL must see the same expression in SELECT and GROUP BY."""
    if dialect == "postgresql":
        return sa.func.date_trunc(
            sa.literal_column(f"'{bucket}'"),
            sa.func.timezone("UTC", Log.created_at),
            type_=UTCDateTime,
        )
    # SQLite holds naive UTC text, `2026-11-21 10:00:00.123456`.
    pattern = "%Y-%m-%d 00:00:00" if bucket == "day" else "%Y-%m-%d %H:00:00"
    return sa.func.strftime(sa.literal_column(f"'{pattern}'"), Log.created_at, type_=UTCDateTime)


def counts_per_bucket(
    filters: dict, viewer: User, bucket: str, since: datetime, until: datetime
) -> list[tuple[datetime, dict[str, int]]]:
    """Rows that `filters` select and `viewer` may see in [since, until), counted per bucket
    and level: every bucket of the range, oldest first, each with a count for every level.

    One GROUP BY over an index range of `created_at` (or of the filter's index), so the work
    grows with the rows in the range, which the window and MAX_BUCKETS bound."""
    engine = reading_engine()
    start = _bucket_of(bucket, engine.dialect.name).label("start")
    query = (
        matching({**filters, "since": since, "until": until}, viewer)
        .with_only_columns(start, Log.level, sa.func.count().label("rows"))
        .group_by(start, Log.level)
    )
    counts = {moment: dict.fromkeys(LEVELS, 0) for moment in bucket_starts(bucket, since, until)}
    with engine.connect() as connection:
        for moment, level, rows in connection.execute(query):
            counts[moment][level] = counts[moment].get(level, 0) + rows
    return list(counts.items())
