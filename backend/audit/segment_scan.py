"""The fast pass over one segment of the trail (segments.py): PostgreSQL checks each row itself.

The database computes every row's hash (its built-in `sha256`, over the canonical JSON that
chain.row_hash builds, written in SQL here), compares it and the row's link to the row before,
and sends one line a row: the row's Merkle leaf hash, nothing else. Python folds the leaves
into the tree (merkle.extend) and checks the signed tree heads and checkpoints in the segment.
A segment of intact rows costs Python a few string joins and one SHA-256 a row.

Python stays the judge of what a hash covers: a row whose hash SQL does not confirm (a number
in `details` that PostgreSQL writes otherwise than Python, JSON nested deeper than SQL_DEPTH,
or a row really altered) comes as its export line, and chain.row_hash decides. Anything else
wrong (a link, a missing id, a version, a head, a checkpoint) ends the pass with None, and the
segment is walked again row by row (verification.walk), which names the broken row as one walk
names it. So the pass only ever says "intact" or "look closer".

Each line is `[v<version> ]<leaf hex>`, `[v<version> ]h<export line>`, or `x`: the version is
given where it changes, as `verification.check_version` notes it.
"""

import binascii
import json
from collections.abc import Callable

import psycopg
import sqlalchemy as sa

from backend.audit import chain, export, merkle
from backend.models import Log

# `details` nested deeper than this (objects and arrays) is hashed by Python, not in SQL.
SQL_DEPTH = 4
# Leaves folded into the tree at once.
BATCH = 8192
LEAF_LINE = 65  # 64 hex digits and the line end


def select(connection: sa.Connection, a: int, b: int, prev_hash: str) -> str:
    """The pass's query over rows a..b, which must follow `prev_hash`, as SQL for COPY."""
    query = sa.select(Log.id, _line(a, prev_hash)).where(Log.id.between(a, b)).order_by(Log.id)
    return export.copy_select(connection.connection.driver_connection, query, connection.dialect)


def scan(
    connection: psycopg.Connection,
    select: str,
    bounds: tuple[int, int],
    signed: dict[int, str],
    roots: dict[int, str],
    frontier: list[bytes],
    progress: Callable[[int], None],
) -> dict | None:
    """Run `select` (rows a..b) and check what it sends, growing `frontier` (the tree of rows
    1..a-1); the segment's result as segments.py reports it, or None to look closer."""
    a, b = bounds
    stops = sorted({*(size for size in roots if a <= size < b), b})
    size, versions, pending = a - 1, [], []
    want = min(stops[0] - size, BATCH)
    options = export.COPY_OPTIONS["ndjson"]
    with connection.cursor().copy(f"COPY ({select}) TO STDOUT ({options})") as copy:
        for line in copy:
            if len(line) != LEAF_LINE:
                line = _special(bytes(line), size + len(pending) + 1, versions)
                if line is None:
                    _drain(copy)
                    return None
            pending.append(line)
            if len(pending) == want:
                size = merkle.extend(frontier, size, _leaves(pending))
                progress(len(pending))
                pending.clear()
                if size == stops[0]:
                    if roots.get(size, merkle.root(frontier)) != merkle.root(frontier):
                        _drain(copy)
                        return None
                    stops.pop(0)
                # Past b (no stop left) nothing more comes; the COPY is read to its end.
                want = min(stops[0] - size, BATCH) if stops else 0
    if size != b or pending or not _checkpoints_agree(connection, signed):
        return None  # a missing row (or, impossibly, one too many): the walk names it
    return {
        "rows": b - a + 1,
        "frontier": merkle.pack(frontier),
        "tree_broken": None,
        "versions": versions,
    }


def _special(line: bytes, row_id: int, versions: list[list[int]]) -> bytes | None:
    """The leaf line of a row that comes with more than its leaf, or None to look closer."""
    if line.startswith(b"v"):
        version, _, line = line.partition(b" ")
        versions.append([int(version[1:]), row_id])
    if line.startswith(b"h"):  # a hash SQL did not confirm: Python's chain.row_hash decides
        row = json.loads(line[1:])
        if row["id"] != row_id or chain.row_hash(row, row["prev_hash"]) != row["hash"]:
            return None
        return merkle.leaf_hash(row["hash"]).hex().encode() + b"\n"
    return line if len(line) == LEAF_LINE else None  # `x`: a link, an id or a version


def _drain(copy) -> None:
    """Read the COPY to its end, so that the transaction (and its snapshot) serves the walk
    that looks closer: cancelling it would abort the transaction."""
    for _ in copy:
        pass


def _leaves(lines: list) -> bytes:
    return binascii.unhexlify(b"".join(lines).replace(b"\n", b""))


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
    changes, then its leaf hash when SQL confirms its hash, else `h` and its export line."""
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
    leaf = sa.literal_column(
        "encode(sha256('\\x00'::bytea || decode(audit_log.hash, 'hex')), 'hex')", sa.Text
    )
    checked = sa.case(
        (row_hash_sql() == Log.hash, leaf), else_="h" + export.json_line("postgresql")
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
        # concat_ws: one allocation for the whole text, where a chain of || copies it at each
        # step (every part is coalesced: concat_ws would skip a NULL).
        fields = [_json(name, values) for name in names]
        canonical = sa.func.concat("[", sa.func.concat_ws(",", *fields), "]", Log.prev_hash)
        digest = sa.func.sha256(sa.func.convert_to(canonical, "UTF8"))
        hashes[version] = sa.func.encode(digest, "hex")
    return sa.case(hashes, value=VERSION)


def _json(name: str, values: dict) -> sa.ColumnElement[str]:
    """A field as json.dumps writes it in the canonical array (\\x01 where SQL cannot say)."""
    if name == "details":
        return sa.literal_column(
            f"CASE WHEN audit_log.details IS NULL THEN 'null'"
            f" WHEN audit_log.details = '{{}}'::jsonb THEN '{{}}'"
            f" ELSE {canonical_json('audit_log.details', SQL_DEPTH)} END",
            sa.Text,
        )
    if isinstance(Log.__table__.c[name].type, sa.Integer):
        # An integer's text is its JSON: no escaping to look for (to_json's cost, every row).
        return sa.func.coalesce(sa.cast(values[name], sa.Text), "null")
    if name in UNESCAPED:
        return sa.func.coalesce('"' + values[name] + '"', "null")
    return sa.func.coalesce(sa.cast(sa.func.to_json(values[name]), sa.Text), "null")


# Text that cannot hold a character JSON escapes: a UUID's canonical form, and the RFC 3339
# time export.text_values makes (digits, `-`, `:`, `.`, `T` and `Z`).
UNESCAPED = ("event_id", "created_at")


def canonical_json(value: str, depth: int) -> str:
    """SQL for the jsonb `value` as json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False) writes it, or a text holding a raw \\x01 (which no canonical JSON
    holds: both escape control characters) when it has objects or arrays more than `depth`
    deep. Keys sort by code point (COLLATE "C" on UTF-8), as Python's do; strings escape alike
    (to_json and jsonb's text both use PostgreSQL's escape_json: the same escapes, lowercase
    \\u00xx)."""
    if depth == 0:
        nested = f"jsonb_typeof({value}) IN ('object', 'array')"
        return f"CASE WHEN {nested} THEN E'\\x01' ELSE {value}::text END"
    key, item, at = f"k{depth}", f"v{depth}", f"n{depth}"
    inner = canonical_json(item, depth - 1)
    members = _joined(
        f"to_json({key})::text || ':' || {inner}",
        f'{key} COLLATE "C"',
        f"jsonb_each({value}) AS o{depth}({key}, {item})",
        "{}",
    )
    elements = _joined(
        inner, at, f"jsonb_array_elements({value}) WITH ORDINALITY AS a{depth}({item}, {at})", "[]"
    )
    return (
        f"CASE jsonb_typeof({value}) WHEN 'object' THEN {members}"
        f" WHEN 'array' THEN {elements} ELSE {value}::text END"
    )


def _joined(element: str, order: str, source: str, brackets: str) -> str:
    """SQL: the `element`s of `source` in `order`, comma separated inside `brackets`. A NULL
    element (none should be) becomes \\x01, never a shorter text (string_agg skips NULLs)."""
    opening, closing = brackets
    parts = f"string_agg(coalesce({element}, E'\\x01'), ',' ORDER BY {order})"
    return f"(SELECT '{opening}' || coalesce({parts}, '') || '{closing}' FROM {source})"
