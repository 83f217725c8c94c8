"""Tamper evidence: `flask audit verify`, `anchor` and GET /v1/logs/verify (issue 5, item 2).

Every tamper test lifts the append-only protection the way the tables' owner could
(`tampering`), changes the trail with raw SQL, and expects verify to name the first broken row.
Its helpers (`tampering`, `flask_audit`, `verify_line`, `assert_broken`, `make_trail`,
`recompute_chain`) are in tests/helpers.py, shared with the other audit test modules.
"""

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

import config
from backend.audit import merkle
from backend.audit.chain import checkpoint_mac, link, row_hash, unlinked
from backend.audit.events import AuditEvent
from backend.audit.writer import writer
from backend.clock import utcnow
from backend.extensions import db
from backend.models import AuditChain, Checkpoint, Log
from tests.helpers import (
    CHECKPOINT_EVERY_3,
    assert_broken,
    assert_error,
    flask_audit,
    make_trail,
    recompute_chain,
    spooled,
    stored_rows,
    tampering,
    verify_line,
    write,
)


def verdict(runner, *args: str) -> tuple[int, dict]:
    """`flask audit verify --json ARGS...`: its exit code and the verdict it printed."""
    result = flask_audit(runner, "verify", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def shift_ids(connection: sa.Connection, from_id: int, by: int) -> None:
    """Renumber the rows from `from_id` on by `by` (in two steps: ids are unique)."""
    connection.execute(sa.update(Log).where(Log.id >= from_id).values(id=-(Log.id + by)))
    connection.execute(sa.update(Log).where(Log.id < 0).values(id=-Log.id))


def forged_row(connection: sa.Connection, row_id: int, prev_hash: str) -> dict:
    """A copy of row 1 as row `row_id`, with a fresh event id and a hash that fits `prev_hash`."""
    row = stored_rows(connection)[0]
    row.update(id=row_id, event_id=uuid.uuid4(), track="forged")
    row["prev_hash"], row["hash"] = prev_hash, row_hash(row, prev_hash)
    return row


def hash_of(connection: sa.Connection, row_id: int) -> str:
    return connection.scalar(sa.select(Log.hash).where(Log.id == row_id))


# -- the hashes made under the chain's lock --------------------------------------------------


def test_link_hashes_every_row_as_row_hash_recomputes_it():
    """`link` hashes from canonical JSON made before the chain's lock (`unlinked`); each hash
    is the one `row_hash` (verify's) recomputes from the whole row: nested details with keys
    out of order, text beyond ASCII, and a time moved up to the head's."""
    head_time = utcnow() + timedelta(seconds=5)  # the writer's clock is behind the head's
    events = [
        AuditEvent(
            source="v1",
            event="user.create",
            level="INFO",
            track="créé ✓",
            user="zoë",
            target_type="user",
            target_id="7",
            target="zoë",
            details={"z": 1, "a": {"y": [1.5, None, "é"], "b": True}, "changes": {}},
        ),
        AuditEvent(source="app", event="request.exception", level="ERROR", track="boom"),
    ]
    head = {
        "last_id": 41,
        "last_hash": "ab" * 32,
        "last_created_at": head_time,
        "since_checkpoint": 0,
        "tree_frontier": merkle.pack([bytes(32)] * 3),  # 41 leaves: 32 + 8 + 1
        "tree_head_at": None,
    }
    rows = link(head, unlinked(events), b"key", 1000).rows
    assert [row["id"] for row in rows] == [42, 43]
    assert [row["created_at"] for row in rows] == [head_time, head_time]
    assert [row["prev_hash"] for row in rows] == [head["last_hash"], rows[0]["hash"]]
    assert [row["hash"] for row in rows] == [row_hash(row, row["prev_hash"]) for row in rows]


# -- an untouched trail -----------------------------------------------------------------------


def test_verify_of_an_untouched_trail_exits_0_saying_intact(client, runner):
    make_trail(client, 5)
    assert verify_line(runner) == (0, "intact: 5 rows (rows 1-5), no signed checkpoint yet")


def test_verify_of_an_empty_trail_exits_0(runner):
    assert verify_line(runner) == (0, "intact: 0 rows (no rows), no signed checkpoint yet")


@CHECKPOINT_EVERY_3
def test_verify_reports_how_far_the_trail_is_signed(client, runner):
    make_trail(client, 7)
    code, line = verify_line(runner)
    assert code == 0
    assert line == "intact: 7 rows (rows 1-7), signed up to row 6"


def test_verify_json_of_an_untouched_trail(client, runner):
    make_trail(client, 4)
    code, body = verdict(runner)
    assert code == 0
    assert body == {
        "intact": True,
        "rows": 4,
        "first_id": 1,
        "last_id": 4,
        "signed_up_to": None,
        "broken_row": None,
        "problem": None,
        "versions": [[2, 1]],
    }


def test_verify_shows_a_progress_bar_on_stderr(client, runner):
    make_trail(client, 3)
    result = flask_audit(runner, "verify")
    assert "verifying" in result.stderr
    assert "verifying" not in result.stdout


# -- tampering: each case names the first broken row ------------------------------------------


def test_a_changed_field_is_named(app, client, runner):
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(sa.update(Log).where(Log.id == 4).values(user="mallory"))
    assert_broken(runner, "BROKEN at row 4: altered")


def test_a_changed_time_is_named(app, client, runner):
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(
            sa.update(Log).where(Log.id == 2).values(created_at=utcnow() - timedelta(days=1))
        )
    assert_broken(runner, "BROKEN at row 2: altered")


def test_details_swapped_for_a_json_string_of_themselves_are_named(app, client, runner):
    """The object `{"reason": ...}` and a string holding its JSON are two values: a row whose
    details became the JSON text of what was written must not pass for it."""
    make_trail(client, 2)
    write(app, details={"reason": "unknown_user"})
    make_trail(client, 2)
    with tampering(app) as connection:
        quoted = (
            "to_jsonb(details::text)"
            if connection.dialect.name == "postgresql"
            else ("json_quote(details)")
        )
        connection.exec_driver_sql(f"UPDATE audit_log SET details = {quoted} WHERE id = 3")
    assert_broken(runner, "BROKEN at row 3: altered")


@pytest.mark.parametrize(
    ("row_id", "expected"),
    [
        (3, "BROKEN at row 3: missing: the row was deleted"),
        (6, "BROKEN at row 6: missing: the chain's head is row 6, the table ends at row 5"),
        (1, "BROKEN at row 1: missing: rows before the first one were deleted without a purge"),
    ],
    ids=["middle", "last", "first"],
)
def test_a_deleted_row_is_named(app, client, runner, row_id, expected):
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(sa.delete(Log).where(Log.id == row_id))
    assert_broken(runner, expected)


@CHECKPOINT_EVERY_3
def test_oldest_rows_deleted_up_to_a_periodic_checkpoint_are_not_a_purge(app, client, runner):
    make_trail(client, 6)
    with tampering(app) as connection:  # row 3 has a signed checkpoint, but not a purge's
        connection.execute(sa.delete(Log).where(Log.id <= 3))
    assert_broken(runner, "BROKEN at row 3: missing: rows before the first one were deleted")


def test_a_row_inserted_in_the_middle_is_named(app, client, runner):
    make_trail(client, 6)
    with tampering(app) as connection:
        shift_ids(connection, 4, by=1)
        connection.execute(sa.insert(Log), forged_row(connection, 4, hash_of(connection, 3)))
        connection.execute(sa.update(AuditChain).values(last_id=7))
    # The forged row 4 follows row 3 perfectly; the break shows at the row it displaced.
    assert_broken(runner, "BROKEN at row 5: does not follow the row before it")


def test_a_head_moved_by_hand_spools_the_next_events_and_verify_still_names_the_break(
    app, client, runner
):
    """The head's Merkle frontier no longer fits its size: no row can be appended after it, and
    the requests are answered while their events wait in the spool."""
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(sa.update(AuditChain).values(last_id=7))
    assert client.get("/").status_code == 200
    spooling, index = spooled(app)
    assert (spooling["event"], index["event"]) == ("audit.spooling", "index.view")
    assert spooling["details"]["reason"] == "broken_head"
    assert (
        "its Merkle frontier holds 2 subtrees where a tree of 7 leaves has 3"
        in (spooling["details"]["error"])
    )
    assert_broken(
        runner, "BROKEN at row 7: missing: the chain's head is row 7, the table ends at row 6"
    )


def test_a_row_appended_with_a_wrong_prev_hash_is_named(app, client, runner):
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(sa.insert(Log), forged_row(connection, 7, "f" * 64))
        connection.execute(sa.update(AuditChain).values(last_id=7))
    assert_broken(runner, "BROKEN at row 7: does not follow the row before it")


def test_a_row_appended_past_the_chains_head_is_named(app, client, runner):
    """INSERT is all the triggers allow, and all this takes: no protection lifted."""
    make_trail(client, 6)
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(sa.insert(Log), forged_row(connection, 7, "f" * 64))
    assert_broken(runner, "BROKEN at row 7: beyond the chain's head (row 6)")


def test_reordered_rows_are_named(app, client, runner):
    make_trail(client, 6)
    with tampering(app) as connection:
        connection.execute(sa.update(Log).where(Log.id == 3).values(id=-3))
        connection.execute(sa.update(Log).where(Log.id == 4).values(id=3))
        connection.execute(sa.update(Log).where(Log.id == -3).values(id=4))
    assert_broken(runner, "BROKEN at row 3: does not follow the row before it")


@CHECKPOINT_EVERY_3
def test_a_chain_recomputed_without_the_key_is_named_at_the_next_checkpoint(app, client, runner):
    make_trail(client, 8)
    with tampering(app) as connection:
        recompute_chain(connection, 2, user="mallory")
    assert_broken(runner, "BROKEN at row 3: differs from its signed checkpoint")


@CHECKPOINT_EVERY_3
def test_a_recomputed_chain_without_its_checkpoints_is_named_where_the_head_counts_from(
    app, client, runner
):
    """The head counts 2 rows since its last periodic checkpoint, which must be row 6; the
    forms of this with the head forged too are in test_checkpoint_cadence.py."""
    make_trail(client, 8)
    with tampering(app) as connection:
        recompute_chain(connection, 2, user="mallory")
        connection.execute(sa.delete(Checkpoint))
    assert_broken(
        runner,
        "BROKEN at row 6: missing: no signed checkpoint at this row, where"
        " the chain's head counts 2 rows since the last periodic one (there"
        " is none): checkpoints were deleted",
    )


@CHECKPOINT_EVERY_3
def test_a_recomputed_chain_without_its_checkpoints_is_named_with_an_anchor(
    app, client, runner, tmp_path
):
    make_trail(client, 8)
    anchor = tmp_path / "anchor.jsonl"
    assert flask_audit(runner, "anchor", "-o", str(anchor)).exit_code == 0
    with tampering(app) as connection:
        recompute_chain(connection, 2, user="mallory")
        connection.execute(sa.delete(Checkpoint))
    assert_broken(
        runner, "BROKEN at row 3: differs from its signed checkpoint", "--anchor", str(anchor)
    )


def test_an_anchor_alone_names_a_chain_recomputed_after_the_last_checkpoint(
    app, client, runner, tmp_path
):
    make_trail(client, 5)
    anchor = tmp_path / "anchor.jsonl"
    flask_audit(runner, "anchor", "-o", str(anchor))
    with tampering(app) as connection:
        recompute_chain(connection, 4, track="nothing happened")
        connection.execute(sa.delete(Checkpoint))
    assert_broken(runner, "BROKEN at row 5: differs", "--anchor", str(anchor))


@CHECKPOINT_EVERY_3
def test_a_checkpoint_signed_with_another_key_is_named(app, client, runner):
    make_trail(client, 5)
    with app.app_context(), db.engine.begin() as connection:  # INSERT: no protection to lift
        log_hash = hash_of(connection, 4)
        connection.execute(
            sa.insert(Checkpoint).values(
                log_id=4,
                log_hash=log_hash,
                created_at=utcnow(),
                reason="anchor",
                mac=checkpoint_mac(b"not the key", 4, log_hash, "anchor"),
            )
        )
    assert_broken(runner, "BROKEN at row 4: the checkpoint for this row is not signed")


def test_a_forged_anchor_file_is_named(client, runner, tmp_path):
    make_trail(client, 4)
    anchor = tmp_path / "anchor.jsonl"
    flask_audit(runner, "anchor", "-o", str(anchor))
    [line] = anchor.read_text().splitlines()
    anchor.write_text(json.dumps({**json.loads(line), "mac": "0" * 64}) + "\n")
    assert_broken(
        runner, "BROKEN at row 4: the anchor for this row is not signed", "--anchor", str(anchor)
    )


def test_verify_json_names_the_broken_row_and_the_problem(app, client, runner):
    make_trail(client, 5)
    with tampering(app) as connection:
        connection.execute(sa.update(Log).where(Log.id == 2).values(track="changed"))
    code, body = verdict(runner)
    assert code == 1
    assert (body["intact"], body["broken_row"]) == (False, 2)
    assert body["problem"].startswith("altered")


# -- flask audit anchor -----------------------------------------------------------------------


@CHECKPOINT_EVERY_3
def test_anchor_writes_every_checkpoint_and_signs_the_head(client, runner, tmp_path):
    make_trail(client, 7)
    anchor = tmp_path / "anchor.jsonl"
    result = flask_audit(runner, "anchor", "-o", str(anchor))
    assert result.exit_code == 0
    assert "signed row 7" in result.stderr
    lines = [json.loads(line) for line in anchor.read_text().splitlines()]
    assert [(line["log_id"], line["reason"]) for line in lines] == [
        (3, "periodic"),
        (6, "periodic"),
        (7, "anchor"),
    ]


def test_a_fresh_anchor_verifies(client, runner, tmp_path):
    make_trail(client, 4)
    anchor = tmp_path / "anchor.jsonl"
    flask_audit(runner, "anchor", "-o", str(anchor))
    make_trail(client, 2)  # after the anchor's own row (5)
    assert verify_line(runner, "--anchor", str(anchor)) == (
        0,
        "intact: 7 rows (rows 1-7), signed up to row 4",
    )


# -- GET /v1/logs/verify ----------------------------------------------------------------------


def test_the_verify_endpoint_says_intact_to_an_admin(api, users):
    response = api.get("/v1/logs/verify", users["admin"])
    assert response.status_code == 200
    body = response.get_json()
    assert (body["intact"], body["rows"], body["broken_row"]) == (True, 3, None)


def test_the_verify_endpoint_gives_the_clis_verdict_on_a_tampered_trail(app, api, users, runner):
    with tampering(app) as connection:
        connection.execute(sa.update(Log).where(Log.id == 2).values(ip="198.51.100.7"))
    response = api.get("/v1/logs/verify", users["admin"])
    assert response.status_code == 200
    body = response.get_json()
    code, cli = verdict(runner)
    assert (body["intact"], body["broken_row"], body["problem"]) == (False, 2, cli["problem"])
    assert (code, cli["broken_row"]) == (1, 2)


def test_the_verify_endpoint_is_forbidden_to_a_user(api, users):
    assert_error(api.get("/v1/logs/verify", users["alice"]), 403)


def test_the_verify_endpoint_needs_a_token(api, users):
    assert_error(api.get("/v1/logs/verify"), 401)


# -- concurrent writers -----------------------------------------------------------------------

THREADS, REQUESTS = 8, 25


def requests_of_a_client(app) -> list[int]:
    """REQUESTS requests from a test client of its own (one thread's share); their statuses."""
    client = app.test_client()
    return [client.get("/").status_code for _ in range(REQUESTS)]


@pytest.fixture
def concurrent_trail(app, api) -> list[Log]:
    """THREADS threads, each with its own test client, making REQUESTS requests at once."""
    with ThreadPoolExecutor(THREADS) as pool:
        statuses = [
            status for batch in pool.map(requests_of_a_client, [app] * THREADS) for status in batch
        ]
    assert statuses == [200] * THREADS * REQUESTS
    return api.rows()


@CHECKPOINT_EVERY_3
def test_concurrent_writes_get_gapless_ids(concurrent_trail):
    assert [row.id for row in concurrent_trail] == list(range(1, THREADS * REQUESTS + 1))


@CHECKPOINT_EVERY_3
def test_concurrent_writes_keep_time_in_id_order(concurrent_trail):
    times = [row.created_at for row in concurrent_trail]
    assert times == sorted(times)


@CHECKPOINT_EVERY_3
def test_concurrent_writes_verify(concurrent_trail, runner):
    rows = THREADS * REQUESTS
    assert verify_line(runner) == (
        0,
        f"intact: {rows} rows (rows 1-{rows}), signed up to row {rows - rows % 3}",
    )


def head_is_locked(app) -> bool:
    """Whether another connection would wait for the chain's head (asked without waiting)."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    engine = sa.create_engine(url, connect_args={"timeout": 0} if "sqlite" in url else {})
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(sa.text("SELECT 1 FROM audit_chain FOR UPDATE NOWAIT"))
            connection.rollback()
        return False
    except sa.exc.OperationalError:  # SQLite's "database is locked", PostgreSQL's 55P03
        return True
    finally:
        engine.dispose()


def test_events_taken_in_once_the_head_is_locked_follow_the_batch_and_verify(app, api, runner):
    """The group commit's `more` (group_commit.py): events that queued while a batch waited
    for the chain's lock are written after it, in the same transaction."""
    joining = [
        AuditEvent(source="app", event="test.event", level="INFO", track=name)
        for name in ("b", "c")
    ]
    locked_when_asked = []

    def more():
        locked_when_asked.append(head_is_locked(app))
        return joining

    with app.app_context():
        assert head_is_locked(app) is False
        ids = writer().write_batch(
            [AuditEvent(source="app", event="test.event", level="INFO", track="a")], more
        )
    assert locked_when_asked == [True]
    assert ids == [1, 2, 3]
    assert [(row.id, row.track) for row in api.rows()] == [(1, "a"), (2, "b"), (3, "c")]
    assert verify_line(runner) == (0, "intact: 3 rows (rows 1-3), no signed checkpoint yet")


@pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="1")
def test_verify_during_concurrent_writes_says_intact(app, api, users):
    """Monitoring polls /v1/logs/verify while the service writes: never a false alarm."""
    with ThreadPoolExecutor(THREADS) as pool:
        writing = [pool.submit(requests_of_a_client, app) for _ in range(THREADS - 1)]
        verdicts = [api.get("/v1/logs/verify", users["admin"]).get_json()]
        while not all(future.done() for future in writing):
            verdicts.append(api.get("/v1/logs/verify", users["admin"]).get_json())
    assert [future.result() for future in writing] == [[200] * REQUESTS] * (THREADS - 1)
    assert [(v["broken_row"], v["problem"]) for v in verdicts if not v["intact"]] == []


WRITER_PROCESS = """
import sys
from backend import create_app, dispose_engines
from backend.audit.events import AuditEvent
from backend.audit.writer import write
from tests.conftest import make_settings

url, instance, name, count = sys.argv[1:]
app = create_app(make_settings(url, instance, AUDIT_CHECKPOINT_EVERY="7"))
print("ready", flush=True)
sys.stdin.readline()
with app.app_context():
    ids = [write(AuditEvent(source="app", event="test.process", level="INFO",
                            track=f"{name} {i}")) for i in range(int(count))]
dispose_engines(app)
print(sum(i is None for i in ids), "spooled")
"""
PER_PROCESS = 60


@pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="7")
def test_two_processes_writing_at_once_leave_every_event_on_one_verifiable_chain(
    database_url, tmp_path, api, runner
):
    """Two app processes of their own on the test's database, writing PER_PROCESS events each,
    released at the same moment."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER_PROCESS,
                database_url,
                str(tmp_path),
                name,
                str(PER_PROCESS),
            ],
            cwd=config.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    try:
        assert [p.stdout.readline() for p in processes] == ["ready\n"] * 2
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs == ["0 spooled\n"] * 2
    rows = api.rows()
    assert [row.id for row in rows] == list(range(1, 2 * PER_PROCESS + 1))
    for name in ("first", "second"):
        tracks = [row.track for row in rows if row.track.startswith(name)]
        assert tracks == [f"{name} {i}" for i in range(PER_PROCESS)]
    code, body = verdict(runner)
    assert (code, body["intact"], body["rows"]) == (0, True, 2 * PER_PROCESS)
    assert body["signed_up_to"] == 2 * PER_PROCESS - 2 * PER_PROCESS % 7
