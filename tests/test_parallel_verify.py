"""`flask audit verify --workers N` on PostgreSQL: segments of the trail checked by processes of
their own (backend/audit/segments.py) find what one walk finds, and name the same row."""

import pytest
import sqlalchemy as sa

from backend.audit import segments
from tests.conftest import postgresql_only
from tests.helpers import both_ways, make_trail, recompute_chain, tampering, verify_line

pytestmark = postgresql_only


@pytest.fixture(autouse=True)
def segments_even_for_a_small_trail(monkeypatch):
    monkeypatch.setattr(segments, "MIN_ROWS", 1)


def test_segments_find_an_intact_trail_intact(client, runner):
    make_trail(client, 12)
    # Each `flask audit verify` adds its own row (cli.audit.verify) after its verdict.
    assert verify_line(runner, "--workers", "3") == (
        0,
        "intact: 12 rows (rows 1-12), no signed checkpoint yet",
    )
    assert verify_line(runner, "--workers", "3") == (
        0,
        "intact: 13 rows (rows 1-13), no signed checkpoint yet",
    )


def test_segments_name_a_changed_row_in_a_later_segment(app, client, runner):
    make_trail(client, 12)
    with tampering(app) as connection:
        connection.execute(sa.text("UPDATE audit_log SET track = 'edited' WHERE id = 10"))
    single, parallel = both_ways(runner)
    assert (
        parallel == single == (1, "BROKEN at row 10: altered: its hash does not match its content")
    )


def test_segments_name_a_row_deleted_at_the_end_of_a_segment(app, client, runner):
    make_trail(client, 12)  # segments of 4 rows: 1-4, 5-8, 9-12
    with tampering(app) as connection:
        connection.execute(sa.text("INSERT INTO audit_purge_permit (id) VALUES (1)"))
        connection.execute(sa.text("DELETE FROM audit_log WHERE id = 8"))
        connection.execute(sa.text("DELETE FROM audit_purge_permit"))
    single, parallel = both_ways(runner)
    assert parallel == single == (1, "BROKEN at row 8: missing: the row was deleted")


def test_segments_name_rows_that_no_longer_hash_to_a_signed_head(app, api, users, runner):
    make_trail(api.client, 9)
    size = len(api.rows())
    assert api.get(f"/v1/logs/{size}/proof", users["admin"]).status_code == 200  # a head of all
    from tests.test_tree import recompute_chain_keeping_the_tree

    with tampering(app) as connection:
        recompute_chain_keeping_the_tree(connection, 3, track="nothing happened")
    single, parallel = both_ways(runner)
    assert parallel == single
    assert parallel[1].startswith(f"BROKEN at row {size}: the rows up to here do not hash"), (
        parallel
    )


def test_segments_find_a_chain_recomputed_without_the_key(app, client, runner):
    make_trail(client, 12)
    with tampering(app) as connection:
        recompute_chain(connection, 6, track="rewritten")
    single, parallel = both_ways(runner)
    # What the database alone cannot tell, either way (no checkpoint); the second walk also
    # sees the first one's own row (cli.audit.verify).
    assert (single[0], parallel[0]) == (0, 0)
    assert single[1].startswith("intact: 12 rows (rows 1-12)"), single
    assert parallel[1] == single[1].replace("12 rows (rows 1-12)", "13 rows (rows 1-13)")
