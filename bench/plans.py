"""EXPLAIN of the trail's queries on PostgreSQL, for the benchmark and tests/test_query_plans.py."""

import re

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

_NODE = re.compile(r"^\s*(?:->\s*)?([A-Z][A-Za-z ]+?(?: using \w+)?(?: on \w+)?)\s+\(cost=")


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
    """The plan's nodes, outermost first: `Limit`, `Index Scan Backward using ix_...`, ..."""
    return [match[1] for line in lines if (match := _NODE.match(line))]


def access_path(lines: list[str]) -> str:
    """The nodes that read the table or sort, in short: how the query finds its rows."""
    wanted = [
        node.replace(" on audit_log", "").replace("ix_audit_log_", "")
        for node in nodes(lines)
        if "Scan" in node or node.startswith("Sort")
    ]
    return " + ".join(dict.fromkeys(wanted))
