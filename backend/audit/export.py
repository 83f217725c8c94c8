"""Exporting the trail: every matching row, streamed, as NDJSON, CSV or OCSF events.

One generator serves `GET /v1/logs/export` and `flask audit export`, so both give the same
bytes. Rows come oldest first, which is the chain's order: an unfiltered NDJSON export can be
verified offline, each row's `prev_hash` being the `hash` of the row before it. They leave in
chunks of FETCH_ROWS rows, so memory stays flat whatever the row count.

On PostgreSQL the database writes the file itself: `COPY (query) TO STDOUT` streams each row
as one finished line (a JSON object, or CSV cells that COPY quotes, in C), and Python only
joins FETCH_ROWS of them into a chunk; the socket's flow control holds the server back when
the client reads slowly. On SQLite the rows are read lazily and the csv module writes them.
OCSF is the NDJSON export with each line made an OCSF event (audit/ocsf.py), chunk by chunk.
"""

import csv
import io
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime

import psycopg
import sqlalchemy as sa

from backend.audit import ocsf
from backend.audit.listing import matching, ordered
from backend.concurrency import pause
from backend.db_types import autocommit_connection
from backend.models import AUDIT_FIELDS, Log, User

# The row of CONTRACT.md (the API's fields), then what offline verification needs.
FIELDS = (
    *(spec.name for spec in AUDIT_FIELDS if spec.api is not None),
    *(spec.name for spec in AUDIT_FIELDS if spec.api is None),
)
NUMBERS = ("id", "status", "actor_id", "token_id", "chain_version")
# Written by the service in digits and hex only: no formula can hide in them.
GENERATED = (*NUMBERS, "created_at", "event_id", "prev_hash", "hash")
MEDIA_TYPES = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "ocsf": "application/x-ndjson",
}
# The name of the file a format's export is offered as: `audit-log.<extension>`.
EXTENSIONS = {"ndjson": "ndjson", "csv": "csv", "ocsf": "ocsf.ndjson"}
# The formats made of the NDJSON rows, and the function that turns a chunk of them into
# pieces of theirs.
FROM_NDJSON = {"ocsf": ocsf.ndjson_events}
FETCH_ROWS = 2000
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection";
# ASVS 5.0, 1.2.10), or with any character that Unicode's compatibility normalisation (NFKC)
# makes one of them: Excel and LibreOffice take a full-width "＝" for "=" in some locales.
FORMULA_CHARACTERS = ("=", "+", "-", "@")
# ... and they skip what comes before: leading spaces (LibreOffice's import may trim them), and
# nothing stops a cell from starting with a no-break or zero-width space, a BOM, a bidi mark.
# So a cell is defused when its first character that is not whitespace, a control or a format
# character (Unicode categories Zs, Zl, Zp, Cc, Cf) is a formula character after NFKC, or when
# it starts with a tab, CR or LF (which OWASP lists too). Defusing too much costs one quote.
LINE_STARTS = ("\t", "\r", "\n")
BLANK_CATEGORIES = ("Zs", "Zl", "Zp", "Cc", "Cf")
# That rule as a regular expression that PostgreSQL's (ARE) and Python's `re` read alike
# (character classes of \u/\U escapes only), as `unicode_formula_pattern()` builds it from
# Python 3.11's Unicode tables. Written out, not built at first use: building it looks at every
# code point (half a second of a gevent worker's only thread, inside a request);
# tests/test_export.py checks the two agree.
FORMULA_PATTERN = (
    r"^([\u0009\u000d\u000a]|[\u0001-\u0020\u007f-\u00a0\u00ad\u0600-\u0605\u061c"
    r"\u06dd\u070f\u0890-\u0891\u08e2\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-"
    r"\u2064\u2066-\u206f\u3000\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-"
    r"\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-"
    r"\U000e007f]*[\u002b\u002d\u003d\u0040\u207a\u207c\u208a\u208c\u2a75-\u2a76\ufb29"
    r"\ufe62-\ufe63\ufe66\ufe6b\uff0b\uff0d\uff1d\uff20])"
)
# Excel reads a CSV file as UTF-8 only when it starts with a byte order mark.
BOM = "\ufeff"
# COPY's CSV: RFC 4180 quoting (a cell with a comma, quote, CR or LF is quoted); NULL is an empty
# cell, as the csv module writes None and "" (which statement() turns into NULL).
# NDJSON: each line is the only column, and COPY writes it as it is: CSV mode quotes a value
# only for its QUOTE or DELIMITER character, CR or LF; the JSON that _json_object builds has no
# raw control character (to_json escapes them), so with \x01 and \x02 as those, none of them.
COPY_OPTIONS = {
    "csv": "FORMAT csv, ENCODING 'UTF8'",
    "ndjson": "FORMAT csv, ENCODING 'UTF8', QUOTE E'\\x01', DELIMITER E'\\x02'",
}
# Planned for its total cost, a COPY may scan or sort every matching row before it sends the
# first: temp files, and nothing for the client until the sort is done. A sort of more rows
# than this is refused for an index read in order (begin_in_order).
SORT_AT_MOST = 100_000


def statement(filters: dict, viewer: User | None, dialect: str, fmt: str) -> sa.Select:
    """The export's query: the rows `filters` select and `viewer` may see (None: every row,
    for the operator), oldest first, as (id, NDJSON line) or (id, *CSV cells)."""
    values = text_values(dialect)
    if fmt == "ndjson" or fmt in FROM_NDJSON:
        columns = [_json_object(values, dialect)]
    else:
        if dialect == "postgresql":  # jsonb's text, which `~` takes
            values["details"] = sa.cast(values["details"], sa.Text)
        columns = [
            value if name in GENERATED else sa.func.nullif(_defused(_as_text(value), dialect), "")
            for name, value in values.items()
        ]
    query = ordered(matching(filters, viewer), "asc")
    return query.with_only_columns(Log.id, *columns)


def json_line(dialect: str) -> sa.ColumnElement[str]:
    """A row as the NDJSON export writes it (without its line end): the relay's messages."""
    return _json_object(text_values(dialect), dialect)


def text_fields(dialect: str, names: tuple[str, ...]) -> list[sa.ColumnElement[str]]:
    """Fields of a row as json_line writes them (`created_at` in RFC 3339...): the syslog
    sink's header, read beside the line rather than parsed back out of it."""
    values = text_values(dialect)
    return [values[name] for name in names]


# Called after each chunk with the id of its last row and how many rows it holds.
Progress = Callable[[int, int], None]


def stream(
    engine: sa.Engine, query: sa.Select, fmt: str, progress: Progress | None = None
) -> Iterator[bytes]:
    """The export of `query` as UTF-8 chunks, one per fetch; `progress(last_id, rows)` before
    each is handed on.

    The query runs before the first chunk, so a view that takes that chunk first (`started`)
    answers a database failure with an error status rather than a truncated 200. The
    connection is released when the generator ends or is closed, as a server closes it when
    the client leaves (a COPY under way is cancelled).
    """
    copy = engine.dialect.name == "postgresql"
    converted = FROM_NDJSON.get(fmt)
    read = "ndjson" if converted else fmt
    with closing((_copied if copy else _fetched)(engine, query, read, progress)) as chunks:
        for chunk in chunks:
            for piece in converted(chunk) if converted else (chunk,):
                yield piece
                pause()  # lets the worker serve its other requests (backend.concurrency)


def _fetched(
    engine: sa.Engine, query: sa.Select, fmt: str, progress: Progress | None
) -> Iterator[bytes]:
    """`stream` on SQLite: the rows fetched a batch at a time, each batch made one chunk."""
    with (
        engine.connect() as connection,
        connection.execution_options(yield_per=FETCH_ROWS).execute(query) as result,
    ):
        yield (BOM + _csv_lines([FIELDS]) if fmt == "csv" else "").encode()
        for batch in result.partitions():
            if fmt == "ndjson":
                chunk = "".join([row[1] + "\n" for row in batch]).encode()
            else:  # the csv module quotes in C, cheaper than PostgreSQL's string functions
                chunk = _csv_lines([row[1:] for row in batch]).encode()
            if progress is not None:
                progress(batch[-1][0], len(batch))
            yield chunk


def _copied(
    engine: sa.Engine, query: sa.Select, fmt: str, progress: Progress | None
) -> Iterator[bytes]:
    """`stream` on PostgreSQL: the rows as COPY writes them, each one line ending in LF."""
    with autocommit_connection(engine) as connection:  # whose rollback ends the transaction
        select = copy_select(connection, query, engine.dialect)
        begin_in_order(connection, select)
        with connection.cursor().copy(f"COPY ({select}) TO STDOUT ({COPY_OPTIONS[fmt]})") as copy:
            # The server starts the COPY before it runs the query: read a row (or the end)
            # before the first chunk, so that a query that fails at once is an error status.
            first = copy.read()
            yield (BOM + _csv_lines([FIELDS]) if fmt == "csv" else "").encode()
            lines: list = [first] if first else []
            for line in copy if first else ():
                lines.append(line)
                if len(lines) == FETCH_ROWS:
                    yield _joined(lines, fmt, progress)
                    lines = []
            if lines:
                yield _joined(lines, fmt, progress)


def copy_select(connection: psycopg.Connection, query: sa.Select, dialect) -> str:
    """`query` without its leading `id` (the first cell is the id too), as SQL with its
    parameters quoted in by psycopg: COPY takes no parameters."""
    cells = query.with_only_columns(*query.selected_columns[1:])
    compiled = cells.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    # What UTCDateTime's bind processing (skipped here) would refuse.
    if any(isinstance(value, datetime) and value.tzinfo is None for value in params.values()):
        raise ValueError("naive datetime in an export filter")
    return psycopg.ClientCursor(connection).mogrify(str(compiled), params)


def begin_in_order(connection: psycopg.Connection, select: str) -> None:
    """Begin the COPY's transaction with the planner held to what a cursor's fast-start plan
    did: no sequential scan, and no sort of more than SORT_AT_MOST rows (a sort of the few
    rows of a rare `q` or level stays: reading the time index past every other row to keep
    their order would cost far more)."""
    connection.execute("BEGIN; SET LOCAL enable_seqscan = off")
    [[plan]] = connection.execute(f"EXPLAIN (FORMAT JSON) {select}").fetchone()
    top = plan["Plan"]
    sort = top["Plans"][0] if top["Node Type"] == "Gather Merge" else top
    if sort["Node Type"] == "Sort" and top["Plan Rows"] > SORT_AT_MOST:
        connection.execute("SET LOCAL enable_sort = off")


def _joined(lines: list, fmt: str, progress: Progress | None) -> bytes:
    """One chunk of COPY's lines; CSV's with RFC 4180's CRLF, not COPY's LF (only the last
    byte of each is its end: a LF before it is inside a quoted cell, and stays)."""
    if progress is not None:  # a line starts with the row's id: `123,` or `{"id":123,`
        start = 0 if fmt == "csv" else len('{"id":')
        progress(int(bytes(lines[-1][start : start + 24]).partition(b",")[0]), len(lines))
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


YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)


def text_values(dialect: str) -> dict[str, sa.ColumnElement]:
    """FIELDS as the database should hand them over: `created_at` in the API's RFC 3339 form
    and `event_id` in canonical UUID form, as text; the rest as stored."""
    values = {name: getattr(Log, name) for name in FIELDS}
    if dialect == "postgresql":
        # A time before year 1 (which no writer makes: Python's datetime has no era) keeps its
        # era, or 0001 BC would read as 0001 AD, and a row moved there would hash as before.
        era = sa.case((Log.created_at < YEAR_ONE, " BC"), else_="")
        values["created_at"] = (
            sa.func.to_char(
                sa.func.timezone("UTC", Log.created_at),
                'YYYY-MM-DD"T"HH24:MI:SS.US"Z"',
                type_=sa.Text,
            )
            + era
        )
        values["event_id"] = sa.cast(Log.event_id, sa.Text)
    else:
        # SQLite keeps UTC as `2026-11-21 10:00:00.123456` (always six digits) and a UUID as
        # its 32 hex digits alone.
        values["created_at"] = (
            sa.func.replace(_as_text(Log.created_at), " ", "T", type_=sa.Text) + "Z"
        )
        # JSON text, which json() minifies and json_object() then embeds as an object.
        values["details"] = sa.func.json(_as_text(Log.details), type_=sa.Text)
        digits = _as_text(Log.event_id)
        groups = [
            sa.func.lower(sa.func.substr(digits, start, length, type_=sa.Text), type_=sa.Text)
            for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        ]
        values["event_id"] = (
            groups[0] + "-" + groups[1] + "-" + groups[2] + "-" + groups[3] + "-" + groups[4]
        )
    return values


def _json_object(values: dict[str, sa.ColumnElement], dialect: str) -> sa.ColumnElement[str]:
    """One compact JSON object, keys in FIELDS order: what json.dumps(row, ensure_ascii=False,
    separators=(",", ":")) writes, byte for byte."""
    if dialect != "postgresql":
        return sa.func.json_object(
            *(part for name, value in values.items() for part in (sa.literal(name), value)),
            type_=sa.Text,
        )
    # PostgreSQL's json_build_object puts spaces around its colons; this does not.
    parts = []
    for name, value in values.items():
        parts.append(f'{"{" if not parts else ","}"{name}":')
        encoded = sa.cast(value if name in NUMBERS else sa.func.to_json(value), sa.Text)
        parts.append(sa.func.coalesce(encoded, "null"))
    return sa.func.concat(*parts, "}", type_=sa.Text)


def _defused(value: sa.ColumnElement[str], dialect: str) -> sa.ColumnElement[str]:
    """A CSV cell that a spreadsheet shows as text: `'` before a would-be formula (see
    FORMULA_CHARACTERS). The same regular expression on both databases: PostgreSQL's `~`, and
    on SQLite the REGEXP that SQLAlchemy's driver gives it (Python's `re`, a call per cell)."""
    defused = value.regexp_match(FORMULA_PATTERN), "'" + value
    if dialect != "sqlite":
        # (The plain `~` alone: the planner costs each operator in the select list, and more
        # of them made it plan the unfiltered export in parallel, not as one index scan.)
        return sa.case(defused, else_=value)
    # A cell that starts with a printable ASCII character other than = + - @ (most) cannot
    # match, and skips the call into Python: without this the export ran at half its speed.
    first = sa.func.unicode(value)
    plain = sa.and_(first.between(0x21, 0x7E), first.not_in([ord(c) for c in FORMULA_CHARACTERS]))
    return sa.case((plain, value), defused, else_=value)


def looks_like_formula(text: str) -> bool:
    """True for a cell that the CSV export defuses: the rule of FORMULA_CHARACTERS, in Python."""
    return _FORMULA.match(text) is not None


_FORMULA = re.compile(FORMULA_PATTERN)


def unicode_formula_pattern() -> str:
    """FORMULA_PATTERN as Python's Unicode tables give it (every code point is looked at)."""
    blank, formula = [], []
    for code in range(1, sys.maxunicode + 1):  # NUL is never stored (events.storable)
        character = chr(code)
        if character.isspace() or unicodedata.category(character) in BLANK_CATEGORIES:
            blank.append(code)
        if unicodedata.normalize("NFKC", character).startswith(FORMULA_CHARACTERS):
            formula.append(code)
    lines = "".join(_escaped(ord(character)) for character in LINE_STARTS)
    return f"^([{lines}]|[{_ranges(blank)}]*[{_ranges(formula)}])"


def _ranges(codes: list[int]) -> str:
    """The sorted `codes` as the inside of a character class: `a-b` for each run."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        _escaped(first) if first == last else f"{_escaped(first)}-{_escaped(last)}"
        for first, last in runs
    )


def _escaped(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _as_text(column: sa.ColumnElement) -> sa.ColumnElement[str]:
    return sa.type_coerce(column, sa.String)


def _csv_lines(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()
