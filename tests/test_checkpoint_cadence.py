"""Missing periodic checkpoints (the outside attacker's report, item 2): `flask audit verify`
names the row where one should be, from the head's count (`since_checkpoint`) and the spacing
of the others (backend/audit/cadence.py), and says what it cannot see: a tail deleted with the
head moved back consistently. Changing AUDIT_CHECKPOINT_EVERY, purges and anchors raise no
alarm.

With a checkpoint every 3 rows, a trail of 8 rows has periodic checkpoints at rows 3 and 6,
and its head counts 2 rows since the last one.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from backend import create_app, dispose_engines
from backend.models import AuditChain, Checkpoint, Log
from tests.conftest import make_settings
from tests.helpers import (
    CHECKPOINT_EVERY_3,
    aged_trail,
    assert_broken,
    flask_audit,
    make_trail,
    purge,
    recompute_chain,
    rewrite_tree,
    tampering,
    verify_line,
)

pytestmark = CHECKPOINT_EVERY_3


def delete_tail(connection: sa.Connection, from_id: int, **head) -> None:
    """Delete rows `from_id` on and move the chain's head back to the row before them, as
    someone who can write the database could (`head`: more of the head's columns to forge)."""
    last = connection.execute(
        sa.select(Log.hash, Log.created_at).where(Log.id == from_id - 1)
    ).one()
    connection.execute(sa.delete(Log).where(Log.id >= from_id))
    connection.execute(
        sa.update(AuditChain)
        .where(AuditChain.id == 1)
        .values(last_id=from_id - 1, last_hash=last.hash, last_created_at=last.created_at, **head)
    )
    rewrite_tree(connection)


def set_head(connection: sa.Connection, **head) -> None:
    connection.execute(sa.update(AuditChain).where(AuditChain.id == 1).values(**head))


def periodic_checkpoints(app) -> list[int]:
    with tampering(app) as connection:  # a read; the owner's connection is at hand here
        return list(
            connection.scalars(
                sa.select(Checkpoint.log_id)
                .where(Checkpoint.reason == "periodic")
                .order_by(Checkpoint.log_id)
            )
        )


@contextmanager
def served_with(database_url: str, tmp_path, every: int) -> Iterator:
    """A test client of the same database under another AUDIT_CHECKPOINT_EVERY (a restart
    with a changed setting), and its CLI runner."""
    app = create_app(
        make_settings(database_url, tmp_path / f"every-{every}", AUDIT_CHECKPOINT_EVERY=str(every))
    )
    try:
        yield app.test_client(), app.test_cli_runner()
    finally:
        dispose_engines(app)


# -- tampering that deletes periodic checkpoints ----------------------------------------------


def test_checkpoints_deleted_after_a_recomputed_row_are_named_where_the_count_ends(
    app, client, runner
):
    make_trail(client, 8)
    with tampering(app) as connection:
        recompute_chain(connection, 5, track="nothing happened")
        connection.execute(sa.delete(Checkpoint).where(Checkpoint.log_id >= 5))
    assert_broken(
        runner,
        "BROKEN at row 6: missing: no signed checkpoint at this row, where"
        " the chain's head counts 2 rows since the last periodic one (row 3)",
    )


@pytest.mark.parametrize(
    ("recomputed", "deleted_from", "since_checkpoint", "expected"),
    [
        (
            (5, {"track": "nothing happened"}),
            5,
            5,  # 8 - 3: agrees with the last one left
            "BROKEN at row 6: missing: no signed checkpoint at this row, where"
            " one is due every 3 rows (AUDIT_CHECKPOINT_EVERY), and 5 rows follow"
            " the last periodic one (row 3)",
        ),
        (
            (2, {"user": "mallory"}),
            0,  # every checkpoint
            8,
            "BROKEN at row 3: missing: no signed checkpoint at this row, where one is due"
            " every 3 rows",
        ),
    ],
    ids=["some-are-named-where-one-is-due", "every-one-is-named-at-the-first-one-due"],
)
def test_checkpoints_deleted_with_the_heads_count_forged(
    app, client, runner, recomputed, deleted_from, since_checkpoint, expected
):
    make_trail(client, 8)
    row_id, changes = recomputed
    with tampering(app) as connection:
        recompute_chain(connection, row_id, **changes)
        connection.execute(sa.delete(Checkpoint).where(Checkpoint.log_id >= deleted_from))
        set_head(connection, since_checkpoint=since_checkpoint)
    assert_broken(runner, expected)


def test_a_wider_spacing_for_a_while_is_no_alarm(app, client, runner, database_url, tmp_path):
    """The setting raised for one stretch, then back: 3, 9, 12 is no missing checkpoint at 6."""
    make_trail(client, 3)
    with served_with(database_url, tmp_path, 6) as (later, _):
        make_trail(later, 6)
    make_trail(client, 4)
    assert periodic_checkpoints(app) == [3, 9, 12]
    assert verify_line(runner) == (0, "intact: 13 rows (rows 1-13), signed up to row 12")


# -- the tail deleted, the head moved back ----------------------------------------------------


@pytest.mark.parametrize(
    ("from_id", "head", "expected"),
    [
        (
            7,
            {},
            "BROKEN at row 7: missing: the chain's head counts 2 rows since the"
            " last periodic checkpoint (row 6), the table 0: rows 7-8 were deleted"
            " and the head moved back",
        ),
        (5, {"since_checkpoint": 1}, "BROKEN at row 5: missing: a signed checkpoint names row 6"),
    ],
    ids=["with-the-head-moved-back", "past-a-checkpoint-is-named-by-the-checkpoint"],
)
def test_the_tail_deleted_is_named(app, client, runner, from_id, head, expected):
    make_trail(client, 8)
    with tampering(app) as connection:
        delete_tail(connection, from_id, **head)
    assert_broken(runner, expected)


def test_the_tail_deleted_with_a_consistent_head_passes_and_verify_says_why(app, client, runner):
    """The limit of a local check: only an anchor kept elsewhere shows row 8 is gone."""
    make_trail(client, 8)
    with tampering(app) as connection:
        delete_tail(connection, 8, since_checkpoint=1)
    result = flask_audit(runner, "verify")
    assert (result.exit_code, result.stdout) == (
        0,
        "intact: 7 rows (rows 1-7), signed up to row 6\n",
    )
    assert result.stderr.splitlines()[-1] == (
        "note: row 7, after the last signed checkpoint, is only as safe as the database:"
        " keep a signed checkpoint outside it (flask audit anchor)"
    )


def test_a_trail_signed_to_its_last_row_has_no_note(client, runner):
    make_trail(client, 6)
    result = flask_audit(runner, "verify")
    assert result.exit_code == 0
    assert "note:" not in result.stderr


def test_the_verify_endpoint_names_a_missing_checkpoint(app, api, users):
    make_trail(api.client, 5)  # 3 logins and these: 8 rows
    with tampering(app) as connection:
        delete_tail(connection, 7)
    body = api.get("/v1/logs/verify", users["admin"]).get_json()
    assert (body["intact"], body["broken_row"]) == (False, 7)
    assert body["problem"].startswith("missing: the chain's head counts 2 rows")


# -- no false alarm ---------------------------------------------------------------------------


def test_a_larger_spacing_from_a_restart_is_no_alarm(app, client, database_url, tmp_path):
    make_trail(client, 7)
    with served_with(database_url, tmp_path, 5) as (later, later_runner):
        make_trail(later, 6)
        assert periodic_checkpoints(app) == [3, 6, 11]
        assert verify_line(later_runner) == (0, "intact: 13 rows (rows 1-13), signed up to row 11")


@pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="5")
def test_a_smaller_spacing_is_no_alarm_before_and_after_the_next_write(
    app, client, database_url, tmp_path
):
    make_trail(client, 9)  # a checkpoint at 5; 4 rows since, more than 3
    with served_with(database_url, tmp_path, 3) as (later, later_runner):
        assert verify_line(later_runner) == (0, "intact: 9 rows (rows 1-9), signed up to row 5")
        make_trail(later, 5)  # after the verify's own row (10)
        assert periodic_checkpoints(app) == [5, 10, 13]
        assert verify_line(later_runner) == (0, "intact: 15 rows (rows 1-15), signed up to row 13")


def test_a_purge_past_periodic_checkpoints_is_no_alarm(client, runner):
    aged_trail(client, old=7, new=1)  # checkpoints at 3 and 6, their rows purged
    assert purge(runner, "--yes").exit_code == 0
    code, line = verify_line(runner)
    assert code == 0, line
    assert line.startswith("intact: 2 rows (rows 8-9, after the signed purge of rows 1-7)")


def test_anchors_between_periodic_checkpoints_are_no_alarm(client, runner, tmp_path):
    make_trail(client, 7)
    assert flask_audit(runner, "anchor", "-o", str(tmp_path / "anchor.jsonl")).exit_code == 0
    make_trail(client, 5)  # after the anchor's own row (8)
    assert verify_line(runner) == (0, "intact: 13 rows (rows 1-13), signed up to row 12")


def test_a_tail_deleted_with_a_consistent_head_is_named_with_an_anchor(
    app, client, runner, tmp_path
):
    """What the note asks for: an anchor kept elsewhere covers the unsigned tail."""
    make_trail(client, 8)
    anchor = tmp_path / "anchor.jsonl"
    flask_audit(runner, "anchor", "-o", str(anchor))
    with tampering(app) as connection:
        delete_tail(connection, 8, since_checkpoint=1)
    assert_broken(
        runner, "BROKEN at row 8: missing: a signed checkpoint names row 8", "--anchor", str(anchor)
    )
