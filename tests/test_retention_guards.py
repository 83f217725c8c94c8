"""Retention that cannot destroy the trail: a purge refuses a future date, a date within the
minimum retention, a bad date and any purge while a legal hold stands, deleting nothing; a dry
run says what a purge would delete; every attempt is a `trail.purge` row.

Every test runs under the default AUDIT_MIN_RETENTION_DAYS of 365 unless it says otherwise.
"""

from datetime import timedelta

import pytest
import sqlalchemy as sa

import config
from backend.audit import retention
from backend.clock import rfc3339, utcnow
from backend.roles import owner_engine
from backend.schemas import RFC3339DateTime
from tests.helpers import (
    aged_trail,
    cutoff,
    days_ago,
    flask_audit,
    ids_and_events,
    purge,
    verify_line,
)


def hold(runner, *args: str):
    """`flask audit hold ARGS...`."""
    return flask_audit(runner, "hold", *args)


def purge_rows(api) -> list[str]:
    """The tracks of the trail.purge rows, oldest first, without the `(by user@host)` suffix."""
    suffix = f" (by {retention.operator()})"
    tracks = [row.track for row in api.rows(event="trail.purge")]
    assert all(track.endswith(suffix) for track in tracks), tracks
    return [track.removesuffix(suffix) for track in tracks]


def assert_refused(result, api, before_rows: list, reason: str) -> None:
    """Exit 1, one line naming `reason`, every row still there, and the refusal recorded."""
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: purge refused, nothing deleted: "), result.output
    assert reason in result.output
    rows = api.rows()
    assert [row.id for row in rows[:-1]] == [row.id for row in before_rows]
    assert (rows[-1].source, rows[-1].event, rows[-1].level) == ("cli", "trail.purge", "WARNING")
    assert " refused: " in rows[-1].track and reason in rows[-1].track


# -- the date ---------------------------------------------------------------------------------


def test_a_purge_before_a_future_date_is_refused_and_deletes_nothing(api, client, runner):
    aged_trail(client, old=3, new=2)
    before = api.rows()
    result = purge(runner, "--yes", before="2099-01-01")
    assert_refused(result, api, before, "2099-01-01T00:00:00.000000Z is in the future")


def test_a_purge_within_the_minimum_retention_is_refused_and_deletes_nothing(api, client, runner):
    aged_trail(client, old=3, new=2)
    before = api.rows()
    result = purge(runner, "--yes", before=days_ago(30))
    assert_refused(result, api, before, "within the minimum retention of 365 days")


def test_the_refusal_names_the_earliest_date_allowed(api, client, runner):
    aged_trail(client, old=1, new=0)
    result = purge(runner, "--yes", before=days_ago(30))
    earliest = result.output.split("the earliest date allowed now is ")[1].strip()
    expected = utcnow() - timedelta(days=365)
    assert abs(RFC3339DateTime().deserialize(earliest) - expected) < timedelta(minutes=1)


def test_a_time_just_inside_the_minimum_retention_is_refused(api, client, runner):
    aged_trail(client, old=2, new=0)
    before = api.rows()
    just_inside = rfc3339(utcnow() - timedelta(days=365) + timedelta(minutes=5))
    assert_refused(
        purge(runner, "--yes", before=just_inside), api, before, "within the minimum retention"
    )


def test_a_time_just_past_the_minimum_retention_is_allowed(api, client, runner):
    aged_trail(client, old=2, new=1)
    just_past = rfc3339(utcnow() - timedelta(days=365) - timedelta(minutes=5))
    assert purge(runner, "--yes", before=just_past).exit_code == 0
    assert ids_and_events(api) == [(3, "index.view"), (4, "trail.purge")]


@pytest.mark.settings(AUDIT_MIN_RETENTION_DAYS="30")
def test_a_shorter_minimum_retention_allows_a_more_recent_date(api, client, runner):
    aged_trail(client, old=2, new=1)
    assert purge(runner, "--yes", before=days_ago(31)).exit_code == 0
    assert ids_and_events(api) == [(3, "index.view"), (4, "trail.purge")]
    assert_refused(
        purge(runner, "--yes", before=days_ago(29)),
        api,
        api.rows()[:2],
        "within the minimum retention of 30 days",
    )


@pytest.mark.parametrize("date", ["last-week", "2026-13-01", "2026-11-21T10:00:00"])
def test_a_bad_date_is_refused_in_one_line_deletes_nothing_and_is_recorded(
    api, client, runner, date
):
    aged_trail(client, old=2, new=0)
    result = purge(runner, "--yes", before=date)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: purge refused, nothing deleted: --before {date!r} is not a date: "
    )
    assert result.output.count("\n") == 1
    assert ids_and_events(api) == [(1, "index.view"), (2, "index.view"), (3, "trail.purge")]
    assert purge_rows(api) == [f"purge refused: --before {date!r} is not a date"]


# -- legal holds ------------------------------------------------------------------------------


def test_a_standing_hold_refuses_every_purge_and_deletes_nothing(api, client, runner):
    aged_trail(client, old=3, new=1)
    assert hold(runner, "add", "case-4711", "--reason", "litigation hold").exit_code == 0
    before = api.rows()
    assert_refused(purge(runner, "--yes"), api, before, "legal hold standing: case-4711")


def test_every_standing_hold_is_named_in_the_refusal(api, client, runner):
    aged_trail(client, old=1, new=0)
    hold(runner, "add", "a", "--reason", "one")
    hold(runner, "add", "b", "--reason", "two")
    assert "legal holds standing: a, b" in purge(runner, "--yes").output


def test_a_released_hold_lets_the_purge_run(api, client, runner):
    aged_trail(client, old=3, new=1)
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    assert hold(runner, "release", "case-4711").exit_code == 0
    assert purge(runner, "--yes").exit_code == 0
    assert [row_id for row_id, _ in ids_and_events(api)] == [4, 5, 6, 7]


def test_a_hold_refuses_even_a_dry_run(api, client, runner):
    aged_trail(client, old=1, new=0)
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    before = api.rows()
    assert_refused(purge(runner, "--dry-run"), api, before, "legal hold standing: case-4711")


@pytest.mark.parametrize("table", ["audit_log", "audit_checkpoint"])
@pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="1")
def test_the_database_refuses_a_permitted_delete_while_a_hold_stands(app, client, runner, table):
    """The triggers enforce holds too: a purge racing a new hold stops at its next batch."""
    aged_trail(client, old=2, new=0)
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    count = f"SELECT count(*) FROM {table}"
    with app.app_context(), owner_engine().connect() as connection:
        before = connection.scalar(sa.text(count))
    with pytest.raises(sa.exc.DBAPIError, match=f"{table} is under a legal hold"):
        with app.app_context(), owner_engine().begin() as connection:
            connection.execute(sa.text("INSERT INTO audit_purge_permit (id) VALUES (1)"))
            connection.execute(sa.text(f"DELETE FROM {table}"))
    with app.app_context(), owner_engine().connect() as connection:
        assert connection.scalar(sa.text(count)) == before > 0


def test_a_hold_placed_during_a_purge_stops_its_next_batch(app, api, client, runner, monkeypatch):
    aged_trail(client, old=4, new=0)
    original = retention.purge_batch

    def place_a_hold_after_the_first_batch(connection, key, up_to, batch):
        deleted = original(connection, key, up_to, batch)
        if deleted and not retention.standing_holds(connection):
            retention.place_hold(connection, "racing", "placed while the purge ran")
        return deleted

    monkeypatch.setattr(retention, "purge_batch", place_a_hold_after_the_first_batch)
    result = purge(runner, "--yes", "--batch", "2")
    assert result.exit_code == 1
    assert "purge stopped after 2 rows: audit_log is under a legal hold" in result.output
    assert [row.id for row in api.rows(event="index.view")] == [3, 4]
    assert purge_rows(api)[-1].startswith("purge stopped after 2 rows: audit_log is under")
    assert verify_line(runner)[0] == 0


def test_placing_and_releasing_a_hold_are_recorded_with_the_os_user(api, runner):
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    hold(runner, "release", "case-4711")
    rows = api.rows()
    assert [(row.source, row.event, row.level) for row in rows] == [
        ("cli", "hold.add", "WARNING"),
        ("cli", "hold.release", "WARNING"),
    ]
    by = f"(by {retention.operator()})"
    assert [row.track for row in rows] == [
        f"legal hold 'case-4711' placed: litigation hold {by}",
        f"legal hold 'case-4711' released {by}",
    ]


def test_hold_list_shows_the_standing_holds_with_who_placed_them(runner):
    assert hold(runner, "list").output == "no legal hold is standing\n"
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    hold(runner, "add", "sar-12", "--reason", "subject access request")
    hold(runner, "release", "sar-12")
    lines = hold(runner, "list").output.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("case-4711: placed ")
    assert lines[0].endswith(f" by {retention.operator()}; reason: litigation hold")


def test_hold_list_all_shows_released_holds_too(runner):
    hold(runner, "add", "sar-12", "--reason", "subject access request")
    hold(runner, "release", "sar-12")
    [line] = hold(runner, "list", "--all").output.splitlines()
    assert ", released " in line and line.endswith("; reason: subject access request")


def test_a_hold_name_already_standing_is_refused(runner):
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    result = hold(runner, "add", "case-4711", "--reason", "again")
    assert result.exit_code == 1
    assert result.output == "Error: a hold named 'case-4711' is already standing\n"


def test_a_released_hold_name_can_be_placed_again(runner):
    hold(runner, "add", "case-4711", "--reason", "litigation hold")
    hold(runner, "release", "case-4711")
    assert hold(runner, "add", "case-4711", "--reason", "reopened").exit_code == 0
    assert hold(runner, "list").output.count("case-4711") == 1


def test_a_hold_is_released_by_its_name_as_placed(runner):
    hold(runner, "add", " case-4711 ", "--reason", "litigation hold")
    assert hold(runner, "release", "case-4711 ").exit_code == 0
    assert hold(runner, "list").output == "no legal hold is standing\n"


def test_releasing_a_hold_that_is_not_standing_exits_1(api, runner):
    result = hold(runner, "release", "nothing")
    assert result.exit_code == 1
    assert result.output == "Error: no hold named 'nothing' is standing\n"
    [refused] = api.rows()
    assert (refused.event, refused.outcome, refused.target) == (
        "hold.release",
        "failure",
        "nothing",
    )


def test_a_hold_without_reason_is_a_usage_error(api, runner):
    result = hold(runner, "add", "x")
    assert result.exit_code == 2
    assert "Missing option '--reason'" in result.output
    assert hold(runner, "list").output == "no legal hold is standing\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("add", "x", "--reason", "  "), "a hold needs a reason (--reason)"),
        (("add", " ", "--reason", "why"), "a hold's name must be 1 to 64 characters"),
        (("add", "x" * 65, "--reason", "why"), "a hold's name must be 1 to 64 characters"),
    ],
)
def test_a_hold_needs_a_name_and_a_reason(api, runner, args, error):
    result = hold(runner, *args)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {error}")
    assert hold(runner, "list").output == "no legal hold is standing\n"
    refused, listed = api.rows()
    assert (refused.event, refused.outcome, refused.details["reason"]) == (
        "hold.add",
        "failure",
        "invalid_hold",
    )
    assert listed.event == "cli.audit.hold.list"


# -- dry run ----------------------------------------------------------------------------------


def test_a_dry_run_says_what_would_go_and_deletes_nothing(api, client, runner):
    aged_trail(client, old=3, new=2)
    old = api.rows()[:3]
    result = purge(runner, "--dry-run")
    assert result.exit_code == 0
    span = f"3 rows (ids 1-3, created {rfc3339(old[0].created_at)} to {rfc3339(old[2].created_at)})"
    assert result.output == f"would purge {span}; nothing deleted (dry run)\n"
    assert [row_id for row_id, _ in ids_and_events(api)] == [1, 2, 3, 4, 5, 6]
    assert purge_rows(api) == [
        f"purge of the rows created before {cutoff()}T00:00:00.000000Z: dry run,"
        f" would delete {span}"
    ]


def test_a_dry_run_matches_what_the_purge_then_deletes(api, client, runner):
    aged_trail(client, old=4, new=2)
    said = purge(runner, "--dry-run").output
    before = {row.id for row in api.rows()}
    purge(runner, "--yes", "--batch", "3")
    deleted = sorted(before - {row.id for row in api.rows()})
    assert said.startswith(f"would purge {len(deleted)} rows (ids {deleted[0]}-{deleted[-1]},")
    assert deleted == [1, 2, 3, 4]


# -- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["development", "production"])
def test_a_minimum_retention_below_one_day_is_refused_outside_testing(env):
    environ = {
        "APP_ENV": env,
        "DATABASE_URL": "sqlite://",
        "SECRET_KEY": "k",
        "AUDIT_SIGNING_KEY": "s",
        "AUDIT_MIN_RETENTION_DAYS": "0",
    }
    with pytest.raises(config.ConfigError, match="AUDIT_MIN_RETENTION_DAYS must be at least 1"):
        config.settings(environ)


def test_tests_may_set_a_minimum_retention_of_zero():
    environ = {
        "APP_ENV": "testing",
        "DATABASE_URL": "sqlite://",
        "SECRET_KEY": "k",
        "AUDIT_MIN_RETENTION_DAYS": "0",
    }
    assert config.settings(environ)["AUDIT_MIN_RETENTION_DAYS"] == 0


def test_the_minimum_retention_defaults_to_a_year():
    environ = {"APP_ENV": "testing", "DATABASE_URL": "sqlite://", "SECRET_KEY": "k"}
    assert config.settings(environ)["AUDIT_MIN_RETENTION_DAYS"] == 365
