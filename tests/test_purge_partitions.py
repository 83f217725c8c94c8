"""Retention on the partitioned trail (issue 21, item 1): `flask audit purge` detaches and
drops the months entirely before its date, deletes rows only in the boundary month, leaves
the rest verifiable, and drops nothing while a legal hold stands."""

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from backend.audit import partitions, retention
from backend.clock import moved, rfc3339, utcnow
from backend.roles import owner_engine
from tests.conftest import postgresql_only
from tests.helpers import make_trail, purge, table_rows, verify_line
from tests.test_partitions import partition_names

pytestmark = [postgresql_only, pytest.mark.settings(AUDIT_MIN_RETENTION_DAYS="0")]


@pytest.fixture
def months(app, client) -> dict:
    """Two months' partitions five months back, two rows in each, then one row now; the
    months, and the purge's date: ten days into the second month."""
    first = partitions.month_of(utcnow() - timedelta(days=150))
    second = partitions.add_months(first, 1)
    with app.app_context(), owner_engine().begin() as connection:
        partitions.maintain(connection, partitions.month_partition(first).start, ahead=1)
    for month in (first, second):
        start = partitions.month_partition(month).start
        with moved(start + timedelta(days=2) - utcnow()):
            make_trail(client, 2)
    make_trail(client, 1)
    cut = partitions.month_partition(second).start + timedelta(days=10)
    return {
        "first": partitions.month_partition(first).name,
        "second": partitions.month_partition(second).name,
        "before": rfc3339(cut),
    }


def test_a_month_entirely_before_the_date_is_dropped_whole(app, runner, months):
    result = purge(runner, "--yes", before=months["before"])
    assert result.exit_code == 0, result.output
    assert months["first"] not in partition_names(app)
    assert "purged 4 rows" in result.output


def test_the_boundary_month_keeps_its_partition_and_loses_only_its_old_rows(app, runner, months):
    result = purge(runner, "--yes", before=months["before"])
    assert result.exit_code == 0, result.output
    assert months["second"] in partition_names(app)
    assert [row.id for row in table_rows(app, "audit_log")][0] == 5  # rows 3 and 4 deleted


def test_the_trail_verifies_after_a_month_was_dropped(app, runner, months):
    purge(runner, "--yes", before=months["before"])
    assert verify_line(runner)[0] == 0


def test_a_dropped_month_leaves_a_signed_checkpoint_of_its_last_row(app, runner, months):
    purge(runner, "--yes", before=months["before"])
    purges = [row.log_id for row in table_rows(app, "audit_checkpoint") if row.reason == "purge"]
    assert purges[0] == 2  # the first month's last row, then the boundary month's batch


def test_a_standing_hold_stops_a_month_from_being_dropped(app, runner, months):
    """DROP fires no DELETE trigger: the purge checks the holds itself."""
    runner.invoke(args=["audit", "hold", "add", "case-7", "--reason", "litigation"])
    result = purge(runner, "--yes", before=months["before"])
    assert result.exit_code == 1
    assert months["first"] in partition_names(app)
    assert len(table_rows(app, "audit_log")) >= 5


def test_a_hold_placed_while_the_month_is_being_dropped_waits_or_stops_it(app, months):
    """`hold add` in flight (its row inserted, not committed): the drop waits on the holds'
    lock, then sees the hold and drops nothing."""
    plan_before = utcnow() - timedelta(days=1)
    outcome = {}
    with app.app_context(), owner_engine().connect() as holding:
        retention.place_hold(holding, "case-8", "placed during the purge")

        def drop() -> None:
            with app.app_context(), owner_engine().connect() as connection:
                plan = retention.plan(connection, plan_before)
                connection.rollback()
                try:
                    with connection.begin():
                        retention.drop_oldest_partition(connection, b"k" * 32, plan)
                except retention.HoldError as error:
                    outcome["refused"] = str(error)

        thread = threading.Thread(target=drop)
        thread.start()
        thread.join(1)
        assert thread.is_alive()  # waiting for the hold's transaction
        holding.commit()
        thread.join(10)
    assert "legal hold standing: case-8" in outcome["refused"]
    assert months["first"] in partition_names(app)
    with app.app_context(), owner_engine().connect() as connection:
        count = connection.execute(sa.text(f"SELECT count(*) FROM {months['first']}")).scalar()
    assert count == 2
