"""Following the trail as it grows: the rows after a given id that a filter selects and a
viewer may see, in id order. `GET /v1/logs/stream` and `flask audit tail -f` poll it.

Each poll is one short query by the primary key on a connection taken from the pool and
given back at once: a follower that waits holds no database connection.
"""

import sqlalchemy as sa

from backend.audit.export import json_line
from backend.audit.listing import matching
from backend.models import Log, User


def newest_id(connection: sa.Connection) -> int:
    """The id of the newest committed row (0 for an empty trail)."""
    return connection.execute(sa.select(sa.func.coalesce(sa.func.max(Log.id), 0))).scalar_one()


def rows_after(
    engine: sa.Engine, filters: dict, viewer: User | None, after_id: int, limit: int
) -> list[tuple[int, str]]:
    """Up to `limit` rows after `after_id`, as (id, JSON text of the export's row)."""
    query = (
        matching(filters, viewer)
        .where(Log.id > after_id)
        .order_by(Log.id)
        .limit(limit)
        .with_only_columns(Log.id, json_line(engine.dialect.name))
    )
    with engine.connect() as connection:
        return [(row_id, line) for row_id, line in connection.execute(query)]


def last_rows(engine: sa.Engine, filters: dict, count: int) -> list[tuple[int, str]]:
    """The newest `count` rows that `filters` select, oldest first (`flask audit tail`)."""
    query = (
        matching(filters, None)
        .order_by(Log.id.desc())
        .limit(count)
        .with_only_columns(Log.id, json_line(engine.dialect.name))
    )
    with engine.connect() as connection:
        return [(row_id, line) for row_id, line in connection.execute(query)][::-1]
