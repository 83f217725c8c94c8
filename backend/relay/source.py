"""What the relay reads: the trail's committed rows after a sink's cursor, in id order.

The writer gives ids out under the chain's lock and commits before the next append can take
one, so the committed rows are always ids 1..N with no hole: everything up to the newest
committed id (`newest_id`, read first) can be delivered, and nothing after it is waited
for. Rows are read by the primary key, never by time, so a batch costs the same at row 10 as
at row 10,000,000.
"""

from dataclasses import dataclass

import sqlalchemy as sa

from backend.audit.export import json_line
from backend.audit.follow import newest_id
from backend.models import Log


@dataclass(frozen=True)
class Batch:
    """Rows to deliver, as (id, JSON text) in id order, and where the cursor may move once
    they are delivered (past rows that the sink's filters leave out too)."""

    rows: list[tuple[int, str]]
    up_to: int
    newest: int  # the newest committed row id when the batch was read


def read_batch(
    connection: sa.Connection, after_id: int, filters: dict[str, tuple[str, ...]], limit: int
) -> Batch:
    """At most `limit` rows after `after_id` that match `filters` (row field -> values)."""
    newest = newest_id(connection)
    if newest <= after_id:
        return Batch([], after_id, newest)
    query = sa.select(Log.id, json_line(connection.dialect.name)).where(
        Log.id > after_id, Log.id <= newest
    )
    for column, values in filters.items():
        query = query.where(Log.__table__.columns[column].in_(values))
    rows = [tuple(row) for row in connection.execute(query.order_by(Log.id).limit(limit))]
    # A full batch ends at its last row; a short one has read every match up to `newest`.
    return Batch(rows, rows[-1][0] if len(rows) == limit else newest, newest)
