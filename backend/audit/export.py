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

import psycopg
import sqlalchemy as sa

from backend.audit.query import matching, ordered
from backend.db_types import autocommit_connection
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
# COPY's CSV: RFC 4180 quoting (a cell with a comma, quote, CR or LF is quoted); NULL is an empty
# cell, as the csv module writes None and "" (which statement() turns into NULL).
# NDJSON: each line is the only column, and COPY writes it as it is: CSV mode quotes a value
# only for its QUOTE or DELIMITER character, CR or LF; the JSON that _json_object builds has no
# raw control character (to_json escapes them), so with \x01 and \x02 as those, none of them.
COPY_OPTIONS = {"csv": "FORMAT csv, ENCODING 'UTF8'",
                "ndjson": "FORMAT csv, ENCODING 'UTF8', QUOTE E'\\x01', DELIMITER E'\\x02'"}
# Read the rows through an index in their order, as a cursor's fast-start plan did: planning a
# COPY for its total cost, PostgreSQL may scan and sort a whole table of a few hundred thousand
# rows first (temp files, and nothing sent until the sort is done).
READ_IN_ORDER = "BEGIN; SET LOCAL enable_seqscan = off"


def statement(filters: dict, viewer: User | None, dialect: str, fmt: str) -> sa.Select:
    """The export's query: the rows `filters` select and `viewer` may see (None: every row,
    for the operator), oldest first, as (id, NDJSON line) or (id, *CSV cells)."""
    values = _text_values(dialect)
    if fmt == "ndjson":
        columns = [_json_object(values, dialect)]
    else:
        columns = [value if name in GENERATED else sa.func.nullif(_defused(_as_text(value)), "")
                   for name, value in values.items()]
    query = ordered(matching(filters, viewer), "asc")
    return query.with_only_columns(Log.id, *columns)


def stream(engine: sa.Engine, query: sa.Select, fmt: str,
           progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The export of `query` as UTF-8 chunks, one per fetch; `progress(last_id)` after each.

    The query runs before the first chunk, so a view that takes that chunk first (`started`)
    answers a database failure with an error status rather than a truncated 200. The
    connection is released when the generator ends or is closed, as a server closes it when
    the client leaves (a COPY under way is cancelled).
    """
    if engine.dialect.name == "postgresql":
        yield from _copied(engine, query, fmt, progress)
        return
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


def _copied(engine: sa.Engine, query: sa.Select, fmt: str,
            progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """`stream` on PostgreSQL: the rows as COPY writes them, each one line ending in LF."""
    cells = query.with_only_columns(*query.selected_columns[1:])  # `id` is the first cell
    compiled = cells.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    with autocommit_connection(engine) as connection:
        connection.execute(READ_IN_ORDER)  # and the helper's rollback ends it
        # COPY takes no parameters: psycopg quotes them into the statement (client side).
        sql = psycopg.ClientCursor(connection).mogrify(str(compiled), compiled.params)
        with connection.cursor().copy(f"COPY ({sql}) TO STDOUT ({COPY_OPTIONS[fmt]})") as copy:
            yield (BOM + _csv_lines([FIELDS]) if fmt == "csv" else "").encode()
            lines: list = []
            for line in copy:
                lines.append(line)
                if len(lines) == FETCH_ROWS:
                    yield _joined(lines, fmt, progress)
                    lines = []
            if lines:
                yield _joined(lines, fmt, progress)


def _joined(lines: list, fmt: str, progress: Callable[[int], None] | None) -> bytes:
    """One chunk of COPY's lines; CSV's with RFC 4180's CRLF, not COPY's LF (only the last
    byte of each is its end: a LF before it is inside a quoted cell, and stays)."""
    if progress is not None:  # a line starts with the row's id: `123,` or `{"id":123,`
        start = 0 if fmt == "csv" else len('{"id":')
        progress(int(bytes(lines[-1][start:start + 24]).partition(b",")[0]))
    if fmt == "csv":
        return b"\r\n".join([line[:-1] for line in lines]) + b"\r\n"
    return b"".join(lines)


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
