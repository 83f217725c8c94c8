"""The fast pass over one segment of the trail (segments.py): PostgreSQL checks each row itself.

The database computes every row's hash (its built-in `sha256`, over the canonical JSON that
chain.row_hash builds, written in SQL here), compares it and the row's link to the row before,
and makes a line a row: the row's hash once confirmed, nothing else; it sends them BATCH rows
to a COPY line. Python makes their Merkle leaves, folds them into the tree (merkle.extend)
and checks the signed tree heads and checkpoints in the segment. A segment of intact rows
costs Python about two SHA-256 a row.

Python stays the judge of what a hash covers: a row whose hash SQL does not confirm (a number
in `details` that PostgreSQL writes otherwise than Python, an object in `details` whose keys
jsonb orders otherwise than json.dumps, see DETAILS, or a row really altered) comes as its
export line, and chain.row_hash decides. Anything else wrong (a link, a missing id, a
version, a head, a checkpoint) ends the pass with None, and the segment is walked again row by
row (verification.walk), which names the broken row as one walk names it. So the pass only
ever says "intact" or "look closer".

Each row's line is `[v<version> ]<hash>`, `[v<version> ]h<export line>`, or `x`: the version is
given where it changes, as `verification.check_version` notes it.
"""

import binascii
import json
from collections.abc import Callable

import psycopg
import sqlalchemy as sa

from backend.audit import chain, export, merkle
from backend.models import Log

# Rows a COPY line: PostgreSQL joins their lines into one, since psycopg takes about 3 µs to
# read a COPY line whatever its length (before, most of Python's time a row).
BATCH = 8192
# Between the lines of a batch: a character no line holds (JSON escapes control characters).
SEPARATOR = b"\x1e"
HASH = 64  # the line of a row whose hash SQL confirms: the hash's 64 hex digits


def select(connection: sa.Connection, a: int, b: int, prev_hash: str) -> str:
    """The pass's query over rows a..b, which must follow `prev_hash`, as SQL for COPY: a line
    per BATCH rows from `lo`, `<lo> <how many lines are not a hash> <the lines>` (SEPARATOR
    between them). Each batch reads the row before it too, for the link, without its line."""
    line = _line(a, prev_hash).compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    # The batches in the order generate_series makes them: an ORDER BY would sort them after
    # computing them all. scan checks each line's `lo`. A batch's lines in the order its window
    # makes them, id order: string_agg's own ORDER BY id sorted each batch again (5% of
    # verify's time at 10M rows, docs/benchmarks.md). PostgreSQL's manual says input from a
    # sorted subquery "will usually work", so scan does not take the order on trust: the
    # segment's tree must end where the stored one does (`end`), or it looks closer.
    query = (
        f"SELECT lo || ' ' || (SELECT count(*) FILTER (WHERE length(line) <> {HASH})"
        f" || ' ' || string_agg(line, E'\\x{SEPARATOR.hex()}')"
        f" FROM (SELECT audit_log.id, {line} AS line FROM audit_log"
        f" WHERE audit_log.id BETWEEN greatest(lo - 1, {a:d}) AND least(lo + {BATCH - 1}, {b:d})"
        f") AS batch WHERE id >= lo) FROM generate_series({a:d}, {b:d}, {BATCH}) AS lo"
    )
    return psycopg.ClientCursor(connection.connection.driver_connection).mogrify(query, line.params)


def scan(
    connection: psycopg.Connection,
    select: str,
    bounds: tuple[int, int],
    signed: dict[int, str],
    roots: dict[int, str],
    frontier: list[bytes],
    progress: Callable[[int], None],
    end: str | None,
) -> dict | None:
    """Run `select` (rows a..b) and check what it sends, growing `frontier` (the tree of rows
    1..a-1); the segment's result as segments.py reports it, or None to look closer. `end`:
    the stored tree's frontier of rows 1..b (merkle.pack), which the leaves must grow to: the
    order they came in decides the tree, so a line out of place ends elsewhere (None: no
    stored frontier to compare, look closer)."""
    a, b = bounds
    stops = sorted({*(size for size in roots if a <= size < b), b})
    size, versions = a - 1, []
    options = export.COPY_OPTIONS["ndjson"]
    with connection.cursor().copy(f"COPY ({select}) TO STDOUT ({options})") as copy:
        for lo, line in zip(range(a, b + 1, BATCH), copy, strict=False):
            count = min(BATCH, b - lo + 1)
            hashes = _batch(bytes(line), lo, count, versions)
            leaves = merkle.leaf_hashes(hashes) if hashes is not None else None
            while leaves:  # folded up to each signed root in the batch, which is checked
                take = min(stops[0] - size, len(leaves) // 32)
                size = merkle.extend(frontier, size, leaves[: 32 * take])
                leaves = leaves[32 * take :]
                if size == stops[0]:
                    if roots.get(size, merkle.root(frontier)) != merkle.root(frontier):
                        leaves = None
                        break
                    stops.pop(0)
            if leaves is None:
                _drain(copy)
                return None
            progress(count)
        _drain(copy)  # its end, which zip leaves unread
    if size != b or merkle.pack(frontier) != end or not _checkpoints_agree(connection, signed):
        return None  # a missing row (or, impossibly, one too many), lines out of order, or a
        # stored tree the rows do not make: the walk, which orders its rows, names it
    return {
        "rows": b - a + 1,
        "frontier": merkle.pack(frontier),
        "tree_broken": None,
        "versions": versions,
    }


def _batch(line: bytes, lo: int, count: int, versions: list[list[int]]) -> bytes | None:
    """The hashes (32 bytes each) of the `count` rows from `lo` in a line of the query, or
    None to look closer (a row missing or one too many, a line `x`, a hash Python does not
    confirm)."""
    fields = line.rstrip(b"\n").split(b" ", 2)
    if len(fields) != 3 or fields[0] != b"%d" % lo:
        return None  # no row at all in the batch (a NULL line), or lines out of order
    _, special, text = fields
    if special == b"0":  # every line a hash: `count` of them, or a row is missing
        if len(text) != (HASH + 1) * count - 1:
            return None
        return binascii.unhexlify(text.replace(SEPARATOR, b""))
    lines = text.split(SEPARATOR)
    if len(lines) != count:
        return None
    hashes = []
    for row_id, one in enumerate(lines, lo):
        confirmed = one if len(one) == HASH else _special(one, row_id, versions)
        if confirmed is None:
            return None
        hashes.append(confirmed)
    return binascii.unhexlify(b"".join(hashes))


def _special(line: bytes, row_id: int, versions: list[list[int]]) -> bytes | None:
    """The hash of a row whose line is more than its hash, once confirmed, or None to look
    closer."""
    if line.startswith(b"v"):
        version, _, line = line.partition(b" ")
        versions.append([int(version[1:]), row_id])
    if line.startswith(b"h"):  # a hash SQL did not confirm: Python's chain.row_hash decides
        row = json.loads(line[1:])
        if row["id"] != row_id or chain.row_hash(row, row["prev_hash"]) != row["hash"]:
            return None
        return row["hash"].encode()
    return line if len(line) == HASH else None  # `x`: a link, an id or a version


def _drain(copy) -> None:
    """Read the COPY to its end, so that the transaction (and its snapshot) serves the walk
    that looks closer: cancelling it would abort the transaction."""
    for _ in copy:
        pass


def _checkpoints_agree(connection: psycopg.Connection, signed: dict[int, str]) -> bool:
    """Whether the rows of the signed checkpoints in the segment have the signed hashes (their
    hashes were just checked against their content, in the same snapshot)."""
    if not signed:
        return True
    stored = connection.execute(
        "SELECT id, hash FROM audit_log WHERE id = ANY(%s)", (list(signed),)
    ).fetchall()
    return dict(stored) == signed


# -- the query ---------------------------------------------------------------------------------

VERSION = sa.func.coalesce(Log.chain_version, 1)


def _line(a: int, prev_hash: str) -> sa.ColumnElement[str]:
    """The line of a row: `x` when its id, link or version is wrong; else where its version
    changes, then its hash when SQL confirms it, else `h` and its export line."""
    broken = sa.or_(
        Log.id.is_distinct_from(sa.func.coalesce(_before(Log.id) + 1, a)),
        Log.prev_hash.is_distinct_from(sa.func.coalesce(_before(Log.hash), prev_hash)),
        VERSION.not_in(list(chain.HASHED_FIELDS_OF)),
        VERSION < sa.func.coalesce(_before(VERSION), 0),
    )
    version = sa.case(
        (VERSION.is_distinct_from(_before(VERSION)), "v" + sa.cast(VERSION, sa.Text) + " "),
        else_="",
    )
    checked = sa.case(
        (row_hash_sql() == Log.hash, Log.hash), else_="h" + export.json_line("postgresql")
    )
    return sa.case((broken, "x"), else_=version + checked)


def _before(column):
    """The column's value in the row before (NULL for the segment's first row)."""
    return sa.func.lag(column).over(order_by=Log.id)


def row_hash_sql() -> sa.ColumnElement[str]:
    """chain.row_hash in SQL: SHA-256 of the canonical JSON of the version's fields, then
    `prev_hash`. Where SQL cannot say, the text holds a raw \\x01, which no canonical JSON
    does (both escape control characters): the hash then never matches, and Python decides."""
    values = export.text_values("postgresql")
    hashes = {}
    for version, names in chain.HASHED_FIELDS_OF.items():
        texts = [values[name] for name in names if _escaped(name)]
        canonical = sa.case(
            (sa.func.concat(*texts).op("~")(ESCAPED), _canonical(names, values, to_json=True)),
            else_=_canonical(names, values, to_json=False),
        )
        digest = sa.func.sha256(sa.func.convert_to(canonical, "UTF8"))
        hashes[version] = sa.func.encode(digest, "hex")
    return sa.case(hashes, value=VERSION)


# What JSON escapes in a string (NUL aside, which text cannot hold), as a regular expression.
ESCAPED = '[\\x01-\\x1f"\\\\]'


def _canonical(names: tuple[str, ...], values: dict, to_json: bool) -> sa.ColumnElement[str]:
    """The canonical JSON array of the fields `names`, then `prev_hash`. Without to_json, the
    text fields are written between quotes as they are, which is their JSON when they hold
    nothing ESCAPED: to_json's cost is in finding each value's type, not in escaping."""
    # concat_ws: one allocation for the whole text, where a chain of || copies it at each step
    # (every part is coalesced: concat_ws would skip a NULL).
    fields = [_json(name, values, to_json) for name in names]
    return sa.func.concat("[", sa.func.concat_ws(",", *fields), "]", Log.prev_hash)


def _escaped(name: str) -> bool:
    """Whether the field is text that may hold what JSON escapes."""
    integer = isinstance(Log.__table__.c[name].type, sa.Integer)
    return not integer and name != "details" and name not in UNESCAPED


def _json(name: str, values: dict, to_json: bool) -> sa.ColumnElement[str]:
    """A field as json.dumps writes it in the canonical array (\\x01 where SQL cannot say)."""
    if name == "details":
        return sa.literal_column(DETAILS, sa.Text)
    value = values[name]
    if isinstance(Log.__table__.c[name].type, sa.Integer):
        # An integer's text is its JSON: no escaping to look for (to_json's cost, every row).
        text = sa.cast(value, sa.Text)
    elif to_json and _escaped(name):
        text = sa.cast(sa.func.to_json(value), sa.Text)
    else:  # UNESCAPED, or text that holds nothing ESCAPED
        text = '"' + value + '"'
    return sa.func.coalesce(text, "null")


# Text that cannot hold a character JSON escapes: a UUID's canonical form, and the RFC 3339
# time export.text_values makes (digits, `-`, `:`, `.`, `T` and `Z`; ` BC` before year 1).
UNESCAPED = ("event_id", "created_at")


# `details` as jsonb writes it (jsonb's text: its keys in jsonb's order, a space after each `,`
# and `:` between members and elements), without those spaces. That is json.dumps's canonical
# text when every object's keys are in the same order by length as by code point (jsonb puts
# shorter keys first): one key, keys of one length, `"a"` before `"id"`; otherwise the hash does
# not match and Python decides. The two replaces also take ", " and ": " out of strings, which
# would make the text of another value: the text is used only when it reads back as the very
# value stored (strings compare exactly), else it is \x01.
_COMPACT = "replace(replace(audit_log.details::text, ', ', ','), ': ', ':')"
DETAILS = (
    "CASE WHEN audit_log.details IS NULL THEN 'null'"
    " WHEN audit_log.details = '{}'::jsonb THEN '{}'"
    f" WHEN ({_COMPACT})::jsonb = audit_log.details THEN {_COMPACT}"
    " ELSE E'\\x01' END"
)
