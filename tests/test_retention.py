"""Retention: `flask audit purge --before DATE` deletes old rows through the sanctioned path,
leaves the rest verifiable, and records every attempt. (Its guards and legal holds:
test_retention_guards.py.)

Old rows are made by moving the clock back around real requests, oldest first (the writer keeps
`created_at` non-decreasing along ids): older than the default minimum retention of 365 days,
which every test here runs under. `aged_trail` and `purge` (tests/helpers.py) serve
test_append_only.py and test_retention_guards.py too.
"""

from datetime import timedelta

import sqlalchemy as sa

from backend.audit import retention
from backend.clock import moved, rfc3339
from backend.extensions import db
from backend.models import Checkpoint
from tests.helpers import (
    OLD,
    aged_trail,
    assert_broken,
    cutoff,
    days_ago,
    flask_audit,
    ids_and_events,
    make_trail,
    purge,
    recompute_chain,
    tampering,
    verify_line,
)


def purge_checkpoints(app) -> list[int]:
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(Checkpoint.log_id)
                .where(Checkpoint.reason == "purge")
                .order_by(Checkpoint.id)
            )
        )


def test_purge_deletes_exactly_the_rows_created_before_the_date(api, client, runner):
    _, new = aged_trail(client, old=3, new=2)
    assert purge(runner, "--yes").exit_code == 0
    assert [row.request_id for row in api.rows(event="index.view")] == new
    assert ids_and_events(api) == [(4, "index.view"), (5, "index.view"), (6, "trail.purge")]


def test_purge_keeps_a_row_created_at_the_cutoff_itself(api, client, runner):
    with moved(OLD):
        make_trail(client, 5)
    rows = api.rows()
    at = rows[2].created_at
    assert purge(runner, "--yes", before=rfc3339(at)).exit_code == 0
    kept = {row.id for row in api.rows(event="index.view")}
    assert kept == {row.id for row in rows if row.created_at >= at}
    assert 3 in kept


def test_purge_says_how_many_rows_it_deleted(client, runner):
    aged_trail(client, old=3, new=2)
    result = purge(runner, "--yes")
    assert result.exit_code == 0
    assert result.stdout == "purged 3 rows (up to row 3)\n"


def test_the_trail_verifies_after_a_purge(client, runner):
    aged_trail(client, old=3, new=2)
    purge(runner, "--yes")
    assert verify_line(runner) == (
        0,
        ("intact: 3 rows (rows 4-6, after the signed purge of rows 1-3), none signed since"),
    )


def test_a_purge_leaves_a_signed_checkpoint_of_the_last_deleted_row(app, client, runner):
    aged_trail(client, old=3, new=2)
    purge(runner, "--yes")
    assert purge_checkpoints(app) == [3]


def test_a_purge_is_recorded_with_what_it_deletes_and_who_ran_it(api, client, runner):
    aged_trail(client, old=3, new=2)
    old = api.rows()[:3]
    purge(runner, "--yes")
    last = api.rows()[-1]
    assert (last.source, last.event, last.level, last.user) == (
        "cli",
        "trail.purge",
        "WARNING",
        None,
    )
    assert last.track == (
        f"purge of the rows created before {cutoff()}T00:00:00.000000Z: deleting 3 rows"
        f" (ids 1-3, created {rfc3339(old[0].created_at)} to {rfc3339(old[2].created_at)})"
        f" (by {retention.operator()})"
    )


def test_a_purge_in_several_batches_deletes_every_old_row(app, api, client, runner):
    aged_trail(client, old=5, new=1)
    result = purge(runner, "--yes", "--batch", "2")
    assert result.stdout == "purged 5 rows (up to row 5)\n"
    assert ids_and_events(api) == [(6, "index.view"), (7, "trail.purge")]
    assert purge_checkpoints(app) == [2, 4, 5]


def test_a_purge_in_several_batches_verifies(client, runner):
    aged_trail(client, old=5, new=1)
    purge(runner, "--yes", "--batch", "2")
    assert verify_line(runner) == (
        0,
        ("intact: 2 rows (rows 6-7, after the signed purge of rows 1-5), none signed since"),
    )


def test_purging_every_row_leaves_a_verifiable_trail(api, client, runner):
    aged_trail(client, old=3, new=0)
    purge(runner, "--yes")
    assert ids_and_events(api) == [(4, "trail.purge")]
    assert verify_line(runner) == (
        0,
        ("intact: 1 row (rows 4-4, after the signed purge of rows 1-3), none signed since"),
    )


def test_two_purges_one_after_the_other_verify(app, client, runner):
    with moved(OLD):
        make_trail(client, 2)
    with moved(timedelta(days=-380)):
        make_trail(client, 2)
    make_trail(client, 1)
    purge(runner, "--yes")
    assert purge(runner, "--yes", before=days_ago(370)).exit_code == 0
    assert purge_checkpoints(app) == [2, 4]
    assert verify_line(runner) == (
        0,
        ("intact: 3 rows (rows 5-7, after the signed purge of rows 1-4), none signed since"),
    )


def test_a_purge_with_nothing_before_the_date_says_so_and_exits_0(api, client, runner):
    make_trail(client, 2)
    result = purge(runner, "--yes")
    assert result.exit_code == 0
    assert result.stdout == f"no rows created before {cutoff()}T00:00:00.000000Z\n"
    assert ids_and_events(api) == [(1, "index.view"), (2, "index.view"), (3, "trail.purge")]
    assert api.rows()[-1].track.startswith(
        f"purge of the rows created before {cutoff()}T00:00:00.000000Z: nothing to delete"
    )


def test_without_yes_a_purge_asks_and_no_deletes_nothing(api, client, runner):
    aged_trail(client, old=3, new=1)
    old = api.rows()[:3]
    result = purge(runner, input="n\n")
    assert result.exit_code == 1
    assert (
        f"Delete 3 rows (ids 1-3, created {rfc3339(old[0].created_at)} to"
        f" {rfc3339(old[2].created_at)})? [y/N]"
    ) in result.output
    assert "Aborted" in result.output
    assert ids_and_events(api) == [
        (1, "index.view"),
        (2, "index.view"),
        (3, "index.view"),
        (4, "index.view"),
        (5, "trail.purge"),
    ]
    assert "declined at the prompt, nothing deleted" in api.rows()[-1].track


def test_without_yes_a_purge_answered_yes_deletes(api, client, runner):
    aged_trail(client, old=3, new=1)
    assert purge(runner, input="y\n").exit_code == 0
    assert ids_and_events(api) == [(4, "index.view"), (5, "trail.purge")]


# -- an anchor file made before a purge -------------------------------------------------------
# It names rows the purge removed. Decided: that is not tampering. The purge left a signed
# checkpoint of its last deleted row, which is what the first remaining row follows; the
# anchor's entries for purged rows have nothing left to compare, and its entries for the rows
# that remain still hold them to their signed hashes.


def test_an_anchor_made_before_a_purge_still_verifies(client, runner, tmp_path):
    aged_trail(client, old=3, new=2)
    anchor = tmp_path / "anchor.jsonl"
    flask_audit(runner, "anchor", "-o", str(anchor))
    purge(runner, "--yes")  # rows 6 and 7: the anchor's and the purge's
    assert verify_line(runner, "--anchor", str(anchor)) == (
        0,
        "intact: 4 rows (rows 4-7, after the signed purge of rows 1-3), signed up to row 5",
    )


def test_an_anchor_made_before_a_purge_still_names_a_recomputed_remaining_row(
    app, client, runner, tmp_path
):
    aged_trail(client, old=3, new=2)
    anchor = tmp_path / "anchor.jsonl"
    flask_audit(runner, "anchor", "-o", str(anchor))
    purge(runner, "--yes")
    with tampering(app) as connection:
        recompute_chain(connection, 4, track="nothing happened")
        connection.execute(sa.delete(Checkpoint).where(Checkpoint.reason == "anchor"))
    # The database alone cannot tell.
    assert verify_line(runner) == (
        0,
        ("intact: 4 rows (rows 4-7, after the signed purge of rows 1-3), none signed since"),
    )
    assert_broken(
        runner, "BROKEN at row 5: differs from its signed checkpoint", "--anchor", str(anchor)
    )
