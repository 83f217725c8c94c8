"""On PostgreSQL, with a trail big enough for the planner to care, every main query shape of
/v1/logs reads an index in the cursor's order and stops after its page: no sequential scan,
no sort of the matching rows (`q` aside, where the trigram index finds the few rows first).

The trail is the benchmark's (bench/load.py), loaded by COPY; the plans are printed by
bench/plans.py, which the benchmark uses too (bench/results/explain-N.txt has them at 1M and
10M rows).

The trail is partitioned by month (migration 0012; the loaded rows span the twelve months of
2025): each partition holding rows is read through its own index in order, and an Append or
Merge Append puts the months together. The partitions that hold no row (the months made
ahead, the default one) are left out of the plans checked here: a sequential scan of no page
and a sort of nothing cost nothing (bench/plans.py, `without_empty_partitions`).
"""

import psycopg
import pytest
from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

from backend.audit import export, listing
from backend.models import User
from backend.schemas import LogFiltersSchema, LogQuerySchema
from bench import load
from bench.database import libpq_url
from bench.plans import compiled, empty_partitions, explain, nodes, without_empty_partitions
from bench.query import SHAPES

ROWS = 200_000
PAGE = 101  # a page of 100 rows and the one that says there is a next page
ADMIN = User(username="admin", is_admin=True)
# Single filters that select more than a page here. (At 200,000 rows the benchmark's user0042
# and its address have fewer rows than a page, and then fetching them all and sorting is
# cheaper; at 1M and 10M rows bench/results/explain-N.txt shows them read in order.)
SERVICE = load.SERVICE_ACCOUNT
ORDERED = {
    "first page": {},
    "user": {"user": SERVICE},
    "ip": {"ip": "10.200.0.1"},
    **{
        name: SHAPES[name]
        for name in (
            "levels, rare (ERROR,CRITICAL)",
            "source, rare (app)",
            "event",
            "since + until (one day)",
        )
    },
}


@pytest.fixture(scope="module")
def trail(postgresql_url):
    """ROWS synthetic rows in the session's PostgreSQL database, analysed; emptied after."""
    from tests.conftest import empty_postgresql, owner_url

    empty_postgresql(postgresql_url)
    load.load(libpq_url(owner_url(postgresql_url)), ROWS, b"test-signing-key")
    with psycopg.connect(libpq_url(postgresql_url)) as connection:
        yield connection
    empty_postgresql(postgresql_url)


def plan(connection, params: dict, viewer: User = ADMIN, order: str = "desc") -> list[str]:
    return nodes(plan_lines(connection, params, viewer, order))


def plan_lines(connection, params: dict, viewer: User = ADMIN, order: str = "desc") -> list[str]:
    filters = LogQuerySchema().load({**params, "order": order})
    return explain_rows(connection, listing.first_rows(filters, viewer, order, PAGE))


def sorted_rows(lines: list[str]) -> list[int]:
    """The planner's estimate of the rows each Sort of the plan sorts."""
    return [int(line.split(" rows=")[1].split()[0]) for line in lines if nodes([line]) == ["Sort"]]


def explain_rows(connection, statement) -> list[str]:
    """The plan's lines, but for the partitions holding no row."""
    return without_empty_partitions(explain(connection, statement), empty_partitions(connection))


@pytest.mark.parametrize("name", SHAPES)
def test_no_shape_scans_the_table(trail, name):
    assert not [node for node in plan(trail, SHAPES[name]) if "Seq Scan" in node]


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("name", ORDERED)
def test_a_single_filter_reads_an_index_in_order_without_sorting(trail, name, order):
    assert_reads_in_order(plan_lines(trail, ORDERED[name], order=order), order)


def assert_reads_in_order(lines: list[str], order: str = "desc") -> None:
    """Indexes read in order, no bitmap; and no sort but of fewer rows than a page: over
    partitions, a level that rare (25 CRITICAL rows here) is cheaper to sort than to merge
    the months' index ranges (at 10M rows the merge wins: docs/benchmarks.md)."""
    steps = nodes(lines)
    direction = "Index Scan Backward using" if order == "desc" else "Index Scan using"
    assert [step for step in steps if step.startswith(direction)], steps
    assert not [step for step in steps if step.startswith("Bitmap")], steps
    assert not [rows for rows in sorted_rows(lines) if rows >= PAGE], lines


def test_a_deep_page_costs_what_the_first_does(trail):
    filters = LogQuerySchema().load({})
    first = listing.first_rows(filters, ADMIN, "desc", 101)
    rows = trail.execute(*compiled(listing.first_rows(filters, ADMIN, "desc", 50_000))).fetchall()
    row_id, created_at = rows[-1][:2]
    cursor = listing.Cursor("desc", created_at, row_id)
    deep = listing.first_rows(filters, ADMIN, "desc", 101, after=cursor)
    assert nodes(explain_rows(trail, deep)) == nodes(explain_rows(trail, first))


def test_a_non_admin_reads_their_rows_in_order(trail):
    assert_reads_in_order(plan_lines(trail, {}, viewer=User(username=SERVICE, is_admin=False)))


def test_a_rare_substring_is_found_through_the_trigram_index(trail):
    steps = plan(trail, SHAPES["q, rare (ZeroDivision)"])
    assert "Bitmap Index Scan on ix_audit_log_track_trgm_block" in steps, steps


@pytest.mark.parametrize("part", ["newest block", "older rows"])
def test_both_parts_of_a_rare_substring_search_read_the_block_in_the_index(trail, part):
    """The block of ids is an index condition, not a filter on every matching row's page."""
    filters = LogQuerySchema().load(SHAPES["q, rare (ZeroDivision)"])
    ids = listing.in_block(0) if part == "newest block" else listing.before_block(1)
    lines = explain_rows(trail, listing.first_rows(filters, ADMIN, "desc", 101, ids=ids))
    conditions = [line for line in lines if "Index Cond" in line]  # one a partition read
    assert conditions, lines
    for condition in conditions:
        assert "~~*" in condition and "(id >> 20)" in condition, lines
    assert not [line for line in lines if line.strip().startswith("Filter")], lines


def copy_plan(url: str, filters: dict, fmt: str = "csv") -> list[str]:
    """The plan's lines of the export's COPY, as export.begin_in_order has it made."""
    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        select = export.copy_select(
            connection,
            export.statement(LogFiltersSchema().load(filters), None, "postgresql", fmt),
            pg_dialect.dialect(),
        )
        export.begin_in_order(connection, select)
        lines = [row[0] for row in connection.execute(f"EXPLAIN {select}")]
        connection.rollback()
        return without_empty_partitions(lines, empty_partitions(connection))


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_the_export_streams_in_index_order_without_sorting(trail, postgresql_url, fmt):
    steps = nodes(copy_plan(postgresql_url, {}, fmt))
    # Each month's index in order, the months merged in that order.
    assert steps == ["Merge Append", "Index Scan using ix_audit_log_created_at_id on audit_log"], (
        steps
    )


@pytest.mark.parametrize("name", ORDERED)
def test_a_filtered_export_sorts_no_more_than_a_few_rows(trail, postgresql_url, name, monkeypatch):
    """Planned for its total cost, the COPY of a common filter's rows would fetch them through
    a bitmap and sort them all before sending one (at PostgreSQL's default random_page_cost);
    a rare one's few rows may be sorted."""
    monkeypatch.setattr(export, "SORT_AT_MOST", 1000)
    lines = copy_plan(postgresql_url, ORDERED[name])
    assert not [rows for rows in sorted_rows(lines) if rows > 1000], lines
    assert not [step for step in nodes(lines) if step.startswith("Seq Scan")], lines
