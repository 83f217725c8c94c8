"""Time partitions (issue 21, item 1): on PostgreSQL the trail is partitioned by month, the
months ahead are made by `flask audit maintain` (and the boot), and an insert never fails for
lack of a partition; SQLite keeps one plain table."""

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from backend.audit import partitions
from backend.clock import moved, utcnow
from backend.roles import owner_engine
from tests.conftest import ADMIN, postgresql_only
from tests.helpers import (
    audit_table_unavailable,
    flask_audit,
    latest_migration,
    make_trail,
    schema_version,
    stored_rows,
    verify_line,
)
from tests.test_logs import expected_ids, seen, walk


def partition_names(app) -> set[str]:
    """The names of the trail's partitions, the default one included."""
    with app.app_context(), owner_engine().connect() as connection:
        return set(
            connection.exec_driver_sql(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'audit_log'::regclass"
            ).scalars()
        )


def rows_by_partition(app) -> dict[int, str]:
    """Each row's id and the partition that holds it."""
    with app.app_context(), owner_engine().connect() as connection:
        return dict(
            connection.exec_driver_sql(
                "SELECT id, tableoid::regclass::text FROM audit_log ORDER BY id"
            ).all()
        )


def months_from_now(count: int) -> str:
    """The name of the partition `count` months after the current one."""
    return partitions.month_partition(partitions.add_months(date.today(), count)).name


def maintain(runner):
    result = flask_audit(runner, "maintain")
    assert result.exit_code == 0, result.output
    return result


# -- the months, by the calendar -----------------------------------------------------------------


def test_a_month_ends_where_the_next_begins():
    december = partitions.month_partition(date(2026, 12, 17))
    assert december.name == "audit_log_p2026_12"
    assert december.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)


def test_the_months_due_are_this_one_and_the_next_ones():
    due = partitions.months_due(datetime(2026, 11, 30, 23, 59, tzinfo=UTC), ahead=2)
    assert [partition.name for partition in due] == [
        "audit_log_p2026_11",
        "audit_log_p2026_12",
        "audit_log_p2027_01",
    ]


# -- the partitioned trail ------------------------------------------------------------------------


@postgresql_only
def test_the_migrated_trail_has_this_months_partition_three_more_and_a_default(app):
    assert {months_from_now(count) for count in range(4)} | {partitions.DEFAULT} <= (
        partition_names(app)
    )


@postgresql_only
def test_a_row_lands_in_its_months_partition(app, client):
    make_trail(client, 2)
    assert set(rows_by_partition(app).values()) == {months_from_now(0)}


@postgresql_only
def test_a_row_of_a_month_without_a_partition_lands_in_the_default_one(app, client, runner):
    with moved(timedelta(days=-3 * 366)):
        make_trail(client, 1)
    make_trail(client, 1)
    assert list(rows_by_partition(app).values()) == [partitions.DEFAULT, months_from_now(0)]
    assert verify_line(runner)[0] == 0


@postgresql_only
def test_a_replayed_event_from_a_month_without_a_partition_is_kept(app, api, client, runner):
    """An event spooled years ago, replayed into an empty trail, keeps its time and its row."""
    with moved(timedelta(days=-3 * 366)), audit_table_unavailable(app):
        [request_id] = make_trail(client, 1)
    result = flask_audit(runner, "replay")
    assert result.exit_code == 0, result.output
    [row] = api.rows(request_id=request_id)
    assert row.created_at < utcnow() - timedelta(days=3 * 365)
    assert rows_by_partition(app)[row.id] == partitions.DEFAULT


@postgresql_only
@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM {} WHERE id = 1", "UPDATE {} SET track = 'rewritten'", "TRUNCATE {}"],
)
@pytest.mark.parametrize("partition", ["this month's", "the default"])
def test_sql_naming_a_partition_is_refused_naming_the_trail(app, client, statement, partition):
    """A partition's own trigger: the parent's statement triggers fire only for SQL naming the
    parent, and PostgreSQL clones no TRUNCATE trigger to partitions."""
    if partition == "the default":
        with moved(timedelta(days=-3 * 366)):
            make_trail(client, 1)
    else:
        make_trail(client, 1)
    name = months_from_now(0) if partition == "this month's" else partitions.DEFAULT
    operation = statement.split()[0]
    with (
        pytest.raises(sa.exc.DatabaseError, match=f"audit_log is append-only: {operation} is"),
        app.app_context(),
        owner_engine().begin() as connection,
    ):
        connection.exec_driver_sql(statement.format(name))
    assert len(rows_by_partition(app)) == 1


# -- flask audit maintain ---------------------------------------------------------------------


@postgresql_only
@pytest.mark.settings(AUDIT_PARTITIONS_AHEAD="6")
def test_maintain_makes_the_months_ahead_it_is_set_to(app, runner):
    result = maintain(runner)
    assert {months_from_now(count) for count in range(7)} <= partition_names(app)
    assert months_from_now(6) in result.output


@postgresql_only
def test_maintain_twice_makes_nothing_the_second_time(app, runner):
    maintain(runner)
    before = partition_names(app)
    assert "nothing to make" in maintain(runner).output
    assert partition_names(app) == before


@postgresql_only
def test_maintain_records_a_cli_row(api, runner):
    later = timedelta(days=2 * 366)
    with moved(later):
        maintain(runner)
    [row] = api.rows(event="cli.audit.maintain")
    assert row.source == "cli"
    assert partitions.month_partition(utcnow() + later).name in row.details["made"]
    assert "os_user" in row.details


@postgresql_only
def test_two_maintains_at_once_both_succeed(app):
    """The second waits for the first's lock, then finds its months made."""
    later = utcnow() + timedelta(days=5 * 366)
    results = {}
    with app.app_context(), owner_engine().connect() as first:
        results["first"] = partitions.maintain(first, later, 2)

        def second() -> None:
            with app.app_context(), owner_engine().begin() as connection:
                results["second"] = partitions.maintain(connection, later, 2)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting on the first's lock, not failing
        first.commit()
        thread.join(10)
    assert len(results["first"].made) == 3
    assert results["second"].made == []


@postgresql_only
def test_maintain_leaves_a_month_whose_rows_are_in_the_default_partition(app, client, runner):
    """Attaching it would fail on those rows; they stay where every query finds them."""
    later = timedelta(days=40 * 366)
    with moved(later):
        make_trail(client, 1)
        result = maintain(runner)
    month = partitions.month_partition(utcnow() + later).name
    assert f"not made, their rows are in audit_log_default: {month}" in result.output
    assert month not in partition_names(app)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_maintain_on_sqlite_says_there_is_nothing_to_partition(api, runner):
    assert "plain table" in maintain(runner).output
    assert [row.event for row in api.rows(source="cli")] == ["cli.audit.maintain"]


# -- the migration, both ways -----------------------------------------------------------------


def table_kind(app) -> str:
    """`p` for a partitioned trail, `r` for a plain table."""
    with app.app_context(), owner_engine().connect() as connection:
        return connection.exec_driver_sql(
            "SELECT relkind FROM pg_class WHERE oid = 'audit_log'::regclass"
        ).scalar()


def trail_rows(app) -> list[dict]:
    with app.app_context(), owner_engine().connect() as connection:
        return stored_rows(connection)


@postgresql_only
def test_downgrade_and_upgrade_again_keep_every_row_and_its_chain(app, client, runner):
    for days in (-400, 0, 35, 70):  # the default partition, this month and the next two
        with moved(timedelta(days=days)):
            make_trail(client, 2)
    before = trail_rows(app)
    with app.app_context():
        downgrade(revision="0011")
    assert (table_kind(app), trail_rows(app)) == ("r", before)
    with app.app_context():
        upgrade()
    assert schema_version(app) == [latest_migration()]
    assert table_kind(app) == "p"
    assert trail_rows(app)[: len(before)] == before  # verify's own rows follow
    # The month of the oldest rows, which only the default partition held, has its own now.
    oldest = partitions.month_partition(before[0]["created_at"]).name
    assert rows_by_partition(app)[before[0]["id"]] == oldest
    assert verify_line(runner)[0] == 0
    make_trail(client, 1)
    assert verify_line(runner)[0] == 0


# -- pages across months (issue 21, item 2) ---------------------------------------------------


@postgresql_only
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pages_cross_three_months_while_rows_are_written_and_see_each_row_once(
    app, api, client, order
):
    first = partitions.add_months(partitions.month_of(utcnow()), -2)
    with app.app_context(), owner_engine().begin() as connection:
        partitions.maintain(connection, partitions.month_partition(first).start, ahead=2)
    for month in (first, partitions.add_months(first, 1)):
        with moved(partitions.month_partition(month).start + timedelta(days=2) - utcnow()):
            make_trail(client, 4)
    make_trail(client, 4)
    assert len(set(rows_by_partition(app).values())) == 3
    api.create_user(*ADMIN, is_admin=True)
    token = api.issue_token(ADMIN[0])
    before = expected_ids(api, order=order)

    # A new row before every page (and each page's own audit row), in this month.
    pages = walk(api, token, lambda: make_trail(client, 1), limit=3, order=order)

    got = seen(pages)
    assert len(pages) > 3
    assert len(got) == len(set(got))  # no row twice
    if order == "desc":  # the rows written meanwhile are newer than the walk's start
        assert got == before
    else:  # they come after the old ones, in order, none skipped
        assert got[: len(before)] == before
        assert got == expected_ids(api, order="asc")[: len(got)]
        assert len(got) > len(before)
