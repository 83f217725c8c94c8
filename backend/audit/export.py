"""Exporting the trail: every matching row, streamed, as NDJSON or CSV.

One generator serves `GET /v1/logs/export` and `flask audit export`, so both give the same
bytes. Rows come oldest first, which is the chain's order: an unfiltered NDJSON export can be
verified offline, each row's `prev_hash` being the `hash` of the row before it. They are read
from a server-side cursor FETCH_ROWS at a time on PostgreSQL (SQLite's cursor is lazy anyway)
and leave in chunks of one fetch each, so memory stays flat whatever the row count.

The database does most of the per-row work, in C: it writes each NDJSON line whole, and each
CSV cell's text (the csv module, also C, quotes them); Python mostly joins them up.
"""

import csv
import io
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from backend.audit.query import matching, ordered
from backend.models import Log, User

# The row of CONTRACT.md, then what offline verification needs.
FIELDS = ("id", "created_at", "source", "event", "level", "user", "ip", "track", "method",
          "path", "status", "request_id", "user_agent", "event_id", "prev_hash", "hash")
NUMBERS = ("id", "status")
# Written by the service in digits and hex only: no formula can hide in them.
GENERATED = ("id", "created_at", "status", "event_id", "prev_hash", "hash")
MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
FETCH_ROWS = 2000
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Excel reads a CSV file as UTF-8 only when it starts with a byte order mark.
BOM = "\ufeff"


def statement(filters: dict, viewer: User | None, dialect: str, fmt: str) -> sa.Select:
    """The export's query: the rows `filters` select and `viewer` may see (None: every row,
    for the operator), oldest first, as (id, NDJSON line) or (id, *CSV cells)."""
    values = _text_values(dialect)
    if fmt == "ndjson":
        columns = [_json_object(values, dialect)]
    else:
        columns = [value if name in GENERATED else _defused(_as_text(value))
                   for name, value in values.items()]
    query = ordered(matching(filters, viewer), "asc")
    return query.with_only_columns(Log.id, *columns)


def stream(engine: sa.Engine, query: sa.Select, fmt: str,
           progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The export of `query` as UTF-8 chunks, one per fetch; `progress(last_id)` after each.

    The query runs before the first chunk, so a view that takes that chunk first (`started`)
    answers a database failure with an error status rather than a truncated 200. The
    connection is released when the generator ends or is closed, as a server closes it when
    the client leaves.
    """
    with engine.connect() as connection, \
            connection.execution_options(yield_per=FETCH_ROWS).execute(query) as result:
        yield (BOM + _csv_lines([FIELDS]) if fmt == "csv" else "").encode()
        for batch in result.partitions():
            if fmt == "ndjson":
                yield "".join([row[1] + "\n" for row in batch]).encode()
            else:  # the csv module quotes in C, cheaper than PostgreSQL's string functions
                yield _csv_lines([row[1:] for row in batch]).encode()
            if progress is not None:
                progress(batch[-1][0])


def started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with its first chunk taken now, so that the query's failure raises here, in
    the view, as an error status; closing the result closes `chunks`."""
    first = next(chunks)

    def rest() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
        finally:
            chunks.close()

    return rest()


def _text_values(dialect: str) -> dict[str, sa.ColumnElement]:
    """FIELDS as the database should hand them over: `created_at` in the API's RFC 3339 form
    and `event_id` in canonical UUID form, as text; the rest as stored."""
    values = {name: getattr(Log, name) for name in FIELDS}
    if dialect == "postgresql":
        values["created_at"] = sa.func.to_char(sa.func.timezone("UTC", Log.created_at),
                                               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"', type_=sa.Text)
        values["event_id"] = sa.cast(Log.event_id, sa.Text)
    else:
        # SQLite keeps UTC as `2026-11-21 10:00:00.123456` (always six digits) and a UUID as
        # its 32 hex digits alone.
        values["created_at"] = sa.func.replace(_as_text(Log.created_at), " ", "T",
                                               type_=sa.Text) + "Z"
        digits = _as_text(Log.event_id)
        groups = [sa.func.lower(sa.func.substr(digits, start, length, type_=sa.Text),
                                type_=sa.Text)
                  for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))]
        values["event_id"] = groups[0] + "-" + groups[1] + "-" + groups[2] + "-" + groups[3] \
            + "-" + groups[4]
    return values


def _json_object(values: dict[str, sa.ColumnElement], dialect: str) -> sa.ColumnElement[str]:
    """One compact JSON object, keys in FIELDS order: what json.dumps(row, ensure_ascii=False,
    separators=(",", ":")) writes, byte for byte."""
    if dialect != "postgresql":
        return sa.func.json_object(*(part for name, value in values.items()
                                     for part in (sa.literal(name), value)), type_=sa.Text)
    # PostgreSQL's json_build_object puts spaces around its colons; this does not.
    parts = []
    for name, value in values.items():
        parts.append(f'{"{" if not parts else ","}"{name}":')
        encoded = sa.cast(value if name in NUMBERS else sa.func.to_json(value), sa.Text)
        parts.append(sa.func.coalesce(encoded, "null"))
    return sa.func.concat(*parts, "}", type_=sa.Text)


def _defused(value: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """A CSV cell that a spreadsheet shows as text: `'` before a would-be formula."""
    return sa.case((sa.func.substr(value, 1, 1).in_(FORMULA_STARTS), "'" + value), else_=value)


def _as_text(column: sa.ColumnElement) -> sa.ColumnElement[str]:
    return sa.type_coerce(column, sa.String)


def _csv_lines(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()
