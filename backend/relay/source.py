"""What the relay reads: the trail's committed rows after a sink's cursor, in id order.

The writer gives ids out under the chain's lock and commits before the next append can take
one, so the committed rows are always ids 1..N with no hole: everything up to the newest
committed id (`newest_id`, read first) can be delivered, and nothing after it is waited
for. Rows are read by the primary key, never by time, so a batch costs the same at row 10 as
at row 10,000,000. While a sink takes a full batch, the next is read on a thread of its own
(BatchReader): the database's work and the sink's overlap.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa

from backend.audit.export import json_line, text_fields
from backend.audit.follow import newest_id
from backend.models import Log


@dataclass(frozen=True)
class Batch:
    """Rows to deliver, as (id, JSON text, *the sink's fields) in id order, and where the cursor
    may move once they are delivered (past rows that the sink's filters leave out too)."""

    rows: list[tuple]
    up_to: int
    newest: int  # the newest committed row id when the batch was read


def read_batch(
    connection: sa.Connection,
    after_id: int,
    filters: dict[str, tuple[str, ...]],
    limit: int,
    fields: tuple[str, ...] = (),
) -> Batch:
    """At most `limit` rows after `after_id` that match `filters` (row field -> values), each
    with the `fields` (as text) that its sink puts beside the JSON line."""
    newest = newest_id(connection)
    if newest <= after_id:
        return Batch([], after_id, newest)
    dialect = connection.dialect.name
    query = sa.select(Log.id, json_line(dialect), *text_fields(dialect, fields)).where(
        Log.id > after_id, Log.id <= newest
    )
    for column, values in filters.items():
        query = query.where(Log.__table__.columns[column].in_(values))
    rows = [tuple(row) for row in connection.execute(query.order_by(Log.id).limit(limit))]
    # A full batch ends at its last row; a short one has read every match up to `newest`.
    return Batch(rows, rows[-1][0] if len(rows) == limit else newest, newest)


class BatchReader:
    """A sink's batches: `read(after_id)` returns the batch after `after_id`, and after a full
    one starts reading the next meanwhile (one thread), so the sink never waits on the
    database between batches of a backlog."""

    def __init__(
        self,
        engine: sa.Engine,
        filters: dict[str, tuple[str, ...]],
        limit: int,
        fields: tuple[str, ...] = (),
    ):
        self.engine = engine
        self.filters = filters
        self.limit = limit
        self.fields = fields
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-read")
        self._ahead: tuple[int, Future] | None = None

    def read(self, after_id: int) -> Batch:
        """The batch after `after_id` (read ahead, when the last full batch ended there)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == after_id:
            batch = ahead[1].result()
        else:  # the first batch, or a retry after a failure: what was read ahead is not it
            batch = self._read(after_id)
        if len(batch.rows) == self.limit:
            self._ahead = (batch.up_to, self._pool.submit(self._read, batch.up_to))
        return batch

    def close(self) -> None:
        """Stop reading ahead."""
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, after_id: int) -> Batch:
        with self.engine.connect() as connection:
            return read_batch(connection, after_id, self.filters, self.limit, self.fields)
