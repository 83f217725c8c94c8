"""No loss when writes fail (issue 5, item 3): the local spool and its replay.

The database really cannot take the row: the audit table is renamed away with raw SQL
(`audit_table_unavailable`), or its chain is locked by someone else. The fail-closed 503, when
the spool cannot take the event either, is in test_audit_trail.py.
"""

import json
import sqlite3
from dataclasses import fields
from datetime import datetime

import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from backend.audit.events import AuditEvent
from backend.audit.spool import encode
from backend.audit.writer import writer
from backend.extensions import db
from tests.conftest import ALICE, basic, postgresql_only, wsgi_header
from tests.helpers import (
    DISK_FULL,
    audit_table_unavailable,
    flask_audit,
    make_trail,
    spool_file,
    spooled,
    spooled_events,
    verify_line,
)

# Line breaks of every kind (str.splitlines knows \x1c-\x1e and \x85 too), an escape sequence
# and a would-be second JSON object, in a header a client chooses freely.
HOSTILE_AGENT = 'evil\nagent\r\n{"event":"forged"}\x1b[2K\x1e\x85\x7f'


# The writer's own rows around an outage: the first spooled event, and the replay's end
# (tests/test_structured_record.py checks them).
OUTAGE_MARKERS = ("audit.spooling", "audit.replayed")


def request_ids(api) -> list[str]:
    """The request ids of the rows of requests: not the outage's markers, nor a command's."""
    return [
        row.request_id
        for row in api.rows()
        if row.event not in OUTAGE_MARKERS and row.source != "cli"
    ]


def spooled_requests(app) -> list[str]:
    """The request ids of the spooled events, but for the outage's marker."""
    return [event["request_id"] for event in spooled(app) if event["event"] != "audit.spooling"]


@pytest.fixture
def outage(app, client) -> list[str]:
    """Three requests answered while the audit table is away (it is back afterwards); their
    request ids."""
    with audit_table_unavailable(app):
        return make_trail(client, 3)


# -- while the database cannot take the row ---------------------------------------------------


def test_requests_still_succeed_while_the_audit_table_is_away(app, api, client):
    api.create_user(*ALICE)
    with audit_table_unavailable(app):
        login = client.post("/login", headers=basic(*ALICE))
        me = api.get("/v1/me", login.get_json()["token"])
        index = client.get("/")
    assert [login.status_code, me.status_code, index.status_code] == [200, 200, 200]
    assert [event["event"] for event in spooled(app)] == [
        "audit.spooling",
        "login.success",
        "api.request",
        "index.view",
    ]


def test_the_spool_holds_the_events_in_order(app, outage):
    assert spooled_requests(app) == outage


def test_no_row_is_written_while_the_audit_table_is_away(api, outage):
    assert api.rows() == []


def test_readyz_reports_the_spooled_events(client, outage):
    assert spooled_events(client) == 4  # and the outage's marker


def test_readyz_reports_an_empty_spool(client):
    make_trail(client, 1)
    assert spooled_events(client) == 0


def test_a_write_that_waits_on_the_chains_lock_too_long_is_spooled(app, api, client):
    """Lock timeout: someone else holds the chain's head (5 s on PostgreSQL, 10 s on SQLite)."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        release = blocker.close
    else:
        engine = sa.create_engine(url)
        connection = engine.connect()
        connection.execute(sa.text("SELECT * FROM audit_chain FOR UPDATE"))

        def release():
            connection.close()
            engine.dispose()

    try:
        [request_id] = make_trail(client, 1)
    finally:
        release()
    assert spooled_requests(app) == [request_id]
    assert api.rows() == []


# -- the replay: by the next successful write -------------------------------------------------


def test_the_next_write_replays_the_spool_first_in_order(api, client, outage):
    new = make_trail(client, 1)
    assert request_ids(api) == outage + new


def test_the_replayed_rows_are_the_spooled_events(app, api, client, outage):
    events = spooled(app)
    make_trail(client, 1)
    rows = api.rows()[: len(events)]
    assert [str(row.event_id) for row in rows] == [event["event_id"] for event in events]
    assert [row.created_at for row in rows] == [
        datetime.fromisoformat(event["created_at"]) for event in events
    ]


def test_the_spool_is_empty_after_the_next_write(app, client, outage):
    make_trail(client, 1)
    assert spool_file(app).read_bytes() == b""
    assert spooled_events(client) == 0


def test_the_trail_verifies_after_a_replay(client, runner, outage):
    make_trail(client, 2)
    # The outage's three, its two markers, and the two written after it.
    assert verify_line(runner)[1].startswith("intact: 7 rows (rows 1-7)")


def test_later_writes_are_not_replayed_again(api, client, outage):
    make_trail(client, 1)
    make_trail(client, 1)
    ids = request_ids(api)
    assert len(ids) == len(set(ids)) == 5


# -- the replay: by `flask audit replay` ------------------------------------------------------


def test_flask_audit_replay_writes_the_spool_in_order(api, runner, outage):
    result = flask_audit(runner, "replay")
    assert (result.exit_code, result.stdout) == (0, "replayed 4 events\n")  # and the marker
    assert request_ids(api) == outage


def test_flask_audit_replay_empties_the_spool(app, client, runner, outage):
    flask_audit(runner, "replay")
    assert spool_file(app).read_bytes() == b""
    assert spooled_events(client) == 0


def test_flask_audit_replay_of_an_empty_spool_writes_nothing(api, client, runner):
    make_trail(client, 1)
    result = flask_audit(runner, "replay")
    assert (result.exit_code, result.stdout) == (0, "replayed 0 events\n")
    assert [row.event for row in api.rows()] == ["index.view", "cli.audit.replay"]


def test_flask_audit_replay_while_the_table_is_still_away_keeps_the_spool(app, runner, outage):
    with audit_table_unavailable(app):
        result = flask_audit(runner, "replay")
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: the database did not take the spooled events, which stay in the spool: "
    )
    assert spooled_requests(app) == outage


# -- exactly once: an event in the spool that the database has too ----------------------------


@pytest.fixture
def spool_with_a_written_event(app, api, client) -> list[str]:
    """The spool after a write that committed although the driver reported an error: its event
    is in the table AND first in the spool, before two events of a later outage. Returns the
    request ids: the written one, then the two others."""
    written = make_trail(client, 1)
    with audit_table_unavailable(app):
        later = make_trail(client, 2)
    [row] = api.rows()
    event = AuditEvent(**{field.name: getattr(row, field.name) for field in fields(AuditEvent)})
    spool_file(app).write_bytes(encode(event) + spool_file(app).read_bytes())
    assert spooled_requests(app) == written + later
    return written + later


def test_the_next_write_does_not_write_an_already_written_event_again(
    api, client, spool_with_a_written_event
):
    new = make_trail(client, 1)
    assert request_ids(api) == spool_with_a_written_event + new


def test_flask_audit_replay_does_not_write_an_already_written_event_again(
    api, runner, spool_with_a_written_event
):
    assert flask_audit(runner, "replay").stdout == "replayed 3 events\n"  # and the marker
    assert request_ids(api) == spool_with_a_written_event


# -- the spool file itself --------------------------------------------------------------------


def test_the_spool_has_one_json_line_per_event(app, outage):
    lines = spool_file(app).read_bytes().split(b"\n")
    assert lines[-1] == b""
    events = [json.loads(line) for line in lines[:-1]]
    assert [(event["source"], event["event"]) for event in events] == [
        ("system", "audit.spooling"),
        *[("main", "index.view")] * 3,
    ]


def test_a_control_character_in_the_user_agent_stays_inside_its_line(app, client):
    with audit_table_unavailable(app):
        client.get("/", environ_base={"HTTP_USER_AGENT": wsgi_header(HOSTILE_AGENT)})
        client.get("/")
    events = spooled(app)
    assert len(events) == 3  # the outage's marker first
    assert events[1]["user_agent"] == HOSTILE_AGENT
    assert events[2]["event"] == "index.view"


def test_a_control_character_in_the_user_agent_survives_the_replay(app, api, client, runner):
    with audit_table_unavailable(app):
        client.get("/", environ_base={"HTTP_USER_AGENT": wsgi_header(HOSTILE_AGENT)})
    flask_audit(runner, "replay")
    assert [row.user_agent for row in api.rows(event="index.view")] == [HOSTILE_AGENT]
    assert verify_line(runner)[0] == 0


def test_a_nul_in_the_request_path_is_recorded_not_left_to_block_the_spool(api, client):
    """PostgreSQL text cannot hold NUL: such an event must not fail on every write forever."""
    assert client.get("/v1/%00").status_code == 404
    make_trail(client, 1)
    assert [(row.event, row.path) for row in api.rows()] == [
        ("api.request", "/v1/\N{REPLACEMENT CHARACTER}"),
        ("index.view", "/"),
    ]
    assert spooled_events(client) == 0


# -- the spool on a full disk -----------------------------------------------------------------


@DISK_FULL
def test_a_spool_on_a_full_disk_costs_nothing_while_the_database_works(api, client):
    [request_id] = make_trail(client, 1)
    assert request_ids(api) == [request_id]


# -- PostgreSQL: the connections of the two per-request statements ----------------------------

# The token lookup and the audit append run on the driver's connection in autocommit mode
# there (db_types.autocommit_connection); on SQLite they go through SQLAlchemy.


def pooled_states(engine: sa.Engine) -> list[tuple[bool, TransactionStatus]]:
    """(autocommit, transaction status) of every connection idle in `engine`'s pool."""
    held = [engine.raw_connection() for _ in range(engine.pool.checkedin())]
    try:
        return [
            (c.driver_connection.autocommit, c.driver_connection.info.transaction_status)
            for c in held
        ]
    finally:
        for connection in held:
            connection.close()


@postgresql_only
def test_the_per_request_connections_go_back_to_the_pool_as_they_came(app, api, client):
    """Not in autocommit (the request's session commits what it means to) and in no
    transaction, after a token lookup, a write, and a write whose INSERT failed."""
    api.create_user(*ALICE)
    assert api.get("/v1/me", api.login(*ALICE)).status_code == 200
    with audit_table_unavailable(app):
        [failed] = make_trail(client, 1)
    assert spooled_requests(app) == [failed]
    with app.app_context():
        request_states, writer_states = pooled_states(db.engine), pooled_states(writer().engine)
    assert request_states and writer_states
    assert set(request_states + writer_states) == {(False, TransactionStatus.IDLE)}
    # And they work: the next write replays the spooled event before its own.
    [later] = make_trail(client, 1)
    assert [row.request_id for row in api.rows(event="index.view")] == [failed, later]


@postgresql_only
def test_an_append_returns_only_once_the_wal_holding_it_is_flushed(app):
    """Durable before the response: when a write returns, PostgreSQL's WAL is flushed past
    everything it held when the write began (so past the append's commit). Checked because a
    faster append once committed with synchronous_commit off and meant a later empty
    transaction to flush it, which PostgreSQL does not do for a transaction that wrote no WAL."""
    lsn = sa.text(
        "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn,"
        " pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
    )
    with app.app_context(), db.engine.connect() as probe:
        for number in range(20):
            _, inserted_before = probe.execute(lsn).one()
            probe.rollback()
            writer().write(
                AuditEvent(source="v1", event="test.flush", level="INFO", track=f"write {number}")
            )
            flushed_after, _ = probe.execute(lsn).one()
            probe.rollback()
            assert flushed_after > inserted_before, f"write {number} returned unflushed"


@postgresql_only
def test_the_writer_keeps_the_trigram_index_pending_list_short(app):
    """Every `q` search reads the whole pending list of the trigram index; the sessions that
    insert audit rows set how long it may grow (PostgreSQL's default: 4 MB)."""
    with app.app_context(), writer().engine.connect() as connection:
        limit = connection.exec_driver_sql("SHOW gin_pending_list_limit").scalar()
    assert limit == "256kB"
