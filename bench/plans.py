"""EXPLAIN of the trail's queries on PostgreSQL, for the benchmark and tests/test_query_plans.py."""

import re

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

# A node, and the table it reads without the alias that follows a partition's name.
_NODE = re.compile(
    r"^\s*(?:->\s*)?([A-Z][A-Za-z ]+?(?: using \w+)?)(?:( on \w+)(?: \w+)?)?\s+\(cost="
)
# A partition's own index, as PostgreSQL names it after the parent's columns
# (`audit_log_p2025_01_user_created_at_id_idx`), and a partition (migration 0012).
_PARTITION_INDEX = re.compile(r"\baudit_log_(?:p\d{4}_\d{2}|default)_(\w+?)_idx\b")
_PARTITION = re.compile(r"\baudit_log_(?:p\d{4}_\d{2}|default)\b")
# The partitions' index of `q` (an expression: `expr` in its name) is the parent's trigram one.
_PARTITION_INDEX_NAMES = {"track_expr": "ix_audit_log_track_trgm_block"}


def compiled(statement: sa.Select) -> tuple[str, dict]:
    """`statement` as PostgreSQL SQL with its parameters, for a plain psycopg connection."""
    sql = statement.compile(
        dialect=pg_dialect.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(sql), sql.params


def explain(
    connection: psycopg.Connection,
    statement: sa.Select,
    analyze: bool = False,
    cursor: bool = False,
) -> list[str]:
    """The plan's lines; `cursor`: as planned for a cursor (as the export's server-side one)."""
    sql, params = compiled(statement)
    if cursor:
        sql = f"DECLARE plan_probe CURSOR FOR {sql}"
    options = "ANALYZE, BUFFERS" if analyze else "COSTS"
    lines = [row[0] for row in connection.execute(f"EXPLAIN ({options}) {sql}", params)]
    connection.rollback()
    return lines


def explain_analyze(connection: psycopg.Connection, statement: sa.Select) -> tuple:
    """(execution time in ms, the plan's lines) of running `statement` once."""
    lines = explain(connection, statement, analyze=True)
    [ms] = [
        float(line.split(":")[1].split()[0]) for line in lines if line.startswith("Execution Time")
    ]
    return ms, lines


def nodes(lines: list[str]) -> list[str]:
    """The plan's nodes, outermost first: `Limit`, `Index Scan Backward using ix_...`, ...

    On a partitioned trail each partition's scan is named as the parent's (its index as the
    parent index it belongs to, `on audit_log`), and the same scan of several partitions in a
    row under an Append or Merge Append is listed once: the plan reads as it would on one
    table, with the Append nodes that merge the months."""
    found = []
    for line in lines:
        if not (match := _NODE.match(line)):
            continue
        named = match[1] + (match[2] or "")
        node = _PARTITION.sub("audit_log", _PARTITION_INDEX.sub(_parent_index, named))
        partition_scan = node != named
        if not (partition_scan and found and found[-1] == node):
            found.append(node)
    return found


def _parent_index(match: re.Match) -> str:
    return _PARTITION_INDEX_NAMES.get(match[1], f"ix_audit_log_{match[1]}")


def access_path(lines: list[str]) -> str:
    """The nodes that read the table or sort, in short: how the query finds its rows."""
    wanted = [
        node.replace(" on audit_log", "").replace("ix_audit_log_", "")
        for node in nodes(lines)
        if "Scan" in node or node.startswith("Sort")
    ]
    return " + ".join(dict.fromkeys(wanted))


def empty_partitions(connection: psycopg.Connection) -> set[str]:
    """The trail's partitions that held no row when last analyzed (the months made ahead,
    often the default one); from the catalog, which the app's role may read."""
    rows = connection.execute(
        "SELECT child.relname FROM pg_inherits JOIN pg_class child ON child.oid = inhrelid"
        " WHERE inhparent = to_regclass('audit_log') AND child.reltuples = 0"
    ).fetchall()
    connection.rollback()
    return {name for (name,) in rows}


def without_empty_partitions(lines: list[str], empty: set[str]) -> list[str]:
    """The plan's lines without the subtrees that read only empty partitions: the planner
    reads a partition with no rows however it likes (a sequential scan of no page and a sort
    of nothing cost 0), which says nothing of how the rows are found."""
    kept, skip_deeper_than = [], None
    for at, line in enumerate(lines):
        depth = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if depth > skip_deeper_than:
                continue
            skip_deeper_than = None
        if _NODE.match(line) and _reads_only(lines, at, depth, empty):
            skip_deeper_than = depth
            continue
        kept.append(line)
    return kept


def _reads_only(lines: list[str], at: int, depth: int, empty: set[str]) -> bool:
    """Whether the node at `at` and its subtree read partitions, all of them in `empty`."""
    subtree = [lines[at]]
    for line in lines[at + 1 :]:
        if len(line) - len(line.lstrip()) <= depth and _NODE.match(line):
            break
        subtree.append(line)
    read = {
        match[2].strip()[3:]
        for line in subtree
        if (match := _NODE.match(line)) and match[2] and _PARTITION.search(match[2])
    }
    return bool(read) and read <= empty
