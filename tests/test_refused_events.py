"""No single event can stop the trail: an event the database refuses for what it holds is set
aside in the spool's rejected file and recorded as `audit.rejected`; every other event flows,
on the write path, in a shared batch, and on replay.

The refusal is real: a CHECK constraint (PostgreSQL) or a trigger that raises (SQLite) on
rows whose track holds REFUSED, which no validation of the service knows about.
"""

import json
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from backend.audit.events import AuditEvent
from backend.audit.spool import encode
from backend.audit.writer import writer
from backend.roles import owner_engine
from tests.helpers import flask_audit, make_trail, spool_file, spooled, spooled_events, verify_line

REFUSED = "refuse-me"
# The database's own words, by the first letters of its URL.
REASONS = {
    "sqlite": "refused by the test",
    "postgr": 'new row for relation "audit_log" violates check constraint "test_refuse"',
}


def event(track: str) -> AuditEvent:
    return AuditEvent(source="app", event="test.event", level="INFO", track=track)


@contextmanager
def database_refusing(app, condition: str):
    """The database refuses every new audit row for which `condition` (SQL over the row's
    columns, each written `{row}name`) holds, until the block ends. Set up by the tables'
    owner: the app's role may not alter them."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        add = (
            f"CREATE TRIGGER test_refuse BEFORE INSERT ON audit_log"
            f" WHEN {condition.format(row='NEW.')}"
            f" BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        remove = "DROP TRIGGER test_refuse"
    else:
        add = (
            f"ALTER TABLE audit_log ADD CONSTRAINT test_refuse"
            f" CHECK (NOT ({condition.format(row='')}))"
        )
        remove = "ALTER TABLE audit_log DROP CONSTRAINT test_refuse"
    with app.app_context(), owner_engine().begin() as connection:
        connection.execute(sa.text(add))
    try:
        yield
    finally:
        with app.app_context(), owner_engine().begin() as connection:
            connection.execute(sa.text(remove))


@pytest.fixture
def refusing(app):
    """The database refuses rows whose track holds REFUSED."""
    with database_refusing(app, f"{{row}}track LIKE '%{REFUSED}%'"):
        yield


def rejected_file(app) -> Path:
    return spool_file(app).with_name(spool_file(app).name + ".rejected")


def set_aside(app) -> list[dict]:
    """The events in the rejected file, each line parsed."""
    return [json.loads(line) for line in rejected_file(app).read_bytes().splitlines()]


def tracks(api) -> list[str]:
    return [row.track for row in api.rows()]


# -- the write path ---------------------------------------------------------------------------


def test_a_request_whose_event_is_refused_still_gets_its_answer(client, refusing):
    assert client.get(f"/v1/{REFUSED}").status_code == 404


def test_events_after_a_refused_one_reach_the_database(api, client, refusing):
    client.get(f"/v1/{REFUSED}")
    later = make_trail(client, 2)
    assert [row.request_id for row in api.rows(event="index.view")] == later
    assert spooled_events(client) == 0


def test_a_refused_event_is_recorded_as_audit_rejected_with_its_event_id_and_reason(
    app, api, client, refusing
):
    client.get(f"/v1/{REFUSED}")
    [refused] = set_aside(app)
    [row] = api.rows()
    assert (row.source, row.event, row.level, row.user) == ("app", "audit.rejected", "ERROR", None)
    assert row.track.startswith(
        f"the database refused event {refused['event_id']}"
        f" (v1/api.request); set aside in audit-spool.jsonl.rejected: "
    )
    assert row.track.endswith(": " + REASONS[app.config["SQLALCHEMY_DATABASE_URI"][:6]])
    assert "INSERT" not in row.track and "SELECT" not in row.track


def test_a_refused_event_is_kept_whole_in_an_owner_only_file(app, client, refusing):
    response = client.get(f"/v1/{REFUSED}")
    [refused] = set_aside(app)
    assert (refused["request_id"], refused["track"]) == (
        response.headers["X-Request-ID"],
        f"GET /v1/{REFUSED} -> 404",
    )
    assert stat.S_IMODE(rejected_file(app).stat().st_mode) == 0o600


def test_the_trail_verifies_after_a_refused_event(client, runner, refusing):
    client.get(f"/v1/{REFUSED}")
    make_trail(client, 1)
    code, line = verify_line(runner)
    assert (code, line.startswith("intact: 2 rows (rows 1-2)")) == (0, True), line


def test_the_good_events_of_a_batch_with_a_refused_one_are_all_written_in_order(app, api, refusing):
    batch = [event("one"), event("two"), event(REFUSED), event("four"), event("five")]
    with app.app_context():
        ids = writer().write_batch(batch)
    assert tracks(api) == ["one", "two", tracks(api)[2], "four", "five"]
    assert tracks(api)[2].startswith(f"the database refused event {batch[2].event_id} ")
    assert ids == [1, 2, None, 4, 5]
    assert [e["event_id"] for e in set_aside(app)] == [str(batch[2].event_id)]


def test_events_that_join_a_batch_with_a_refused_one_are_written_in_order_too(app, api, refusing):
    """Events taken into the batch once the chain is locked (group_commit.py): the batch is
    halved around the refused one with them in it."""
    batch = [event("one"), event("two")]
    joining = [event(REFUSED), event("four")]
    with app.app_context():
        ids = writer().write_batch(batch, more=lambda: joining)
    assert tracks(api)[:2] + tracks(api)[3:] == ["one", "two", "four"]
    assert tracks(api)[2].startswith(f"the database refused event {joining[0].event_id} ")
    assert ids == [1, 2, None, 4]
    assert [e["event_id"] for e in set_aside(app)] == [str(joining[0].event_id)]


def test_events_that_joined_a_batch_the_database_cannot_take_are_spooled_with_it(app):
    """Refusing even the record of a refusal, the database is down (below): the events taken
    into the batch once the chain was locked are spooled with it, in order."""
    joining = [event("two"), event("three")]
    with database_refusing(app, "{row}source = 'app' OR {row}event = 'audit.rejected'"):
        with app.app_context():
            ids = writer().write_batch([event("one")], more=lambda: joining)
    assert ids == [None, None, None]
    events = spooled(app)
    assert [e["event"] for e in events] == ["audit.spooling"] + ["test.event"] * 3
    assert [e["track"] for e in events[1:]] == ["one", "two", "three"]
    assert not rejected_file(app).exists()


def test_when_the_database_refuses_even_the_record_of_a_refusal_the_events_are_spooled(
    app, api, client
):
    """Then it is not the event's content but the database (a constraint that takes nothing):
    an outage, spooled and replayed later, and nothing set aside."""
    with database_refusing(app, "{row}source = 'main' OR {row}event = 'audit.rejected'"):
        [request_id] = make_trail(client, 1)
    events = spooled(app)
    assert [e["event"] for e in events] == ["audit.spooling", "index.view"]
    assert events[1]["request_id"] == request_id
    assert not rejected_file(app).exists()
    make_trail(client, 1)
    assert len(api.rows(event="index.view")) == 2


# -- replay -----------------------------------------------------------------------------------


@pytest.fixture
def spool_with_a_refused_event(app, refusing) -> list[AuditEvent]:
    """The spool holding three events, the database refusing the second."""
    events = [event("before"), event(REFUSED), event("after")]
    with app.app_context():
        writer().spool.append(*events)
    return events


def test_the_next_write_replays_the_spool_around_a_refused_event(
    app, api, client, spool_with_a_refused_event
):
    make_trail(client, 1)
    assert tracks(api)[:1] + tracks(api)[2:3] + tracks(api)[4:] == ["before", "after", "GET /"]
    assert tracks(api)[3] == "the database is back: 3 spooled events replayed in order"
    assert tracks(api)[1].startswith(
        f"the database refused event {spool_with_a_refused_event[1].event_id} "
    )
    assert spool_file(app).read_bytes() == b""


def test_flask_audit_replay_sets_aside_a_refused_event_and_replays_the_rest(
    app, api, runner, spool_with_a_refused_event
):
    result = flask_audit(runner, "replay")
    refused = spool_with_a_refused_event[1]
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "replayed 2 events",
        f"set aside 1 events the database refused, kept in {rejected_file(app)}:",
    ]
    assert lines[2].startswith(f"  {refused.event_id} (app/test.event): ")
    assert len(lines) == 3
    assert [row.track for row in api.rows(source="app", event="test.event")] == [
        "before",
        "after",
    ]
    assert [e["event_id"] for e in set_aside(app)] == [str(refused.event_id)]
    assert spool_file(app).read_bytes() == b""


def test_a_spooled_line_with_a_value_of_the_wrong_type_is_set_aside_and_the_rest_replayed(
    app, api, client
):
    """A list where text belongs fails in the driver (SQLite cannot bind it), not in the
    database: read as an unreadable line, not retried forever."""
    good = event("good")
    line = json.loads(encode(event("bad")))
    line["user"] = ["not", "text"]
    spool_file(app).parent.mkdir(parents=True, exist_ok=True)
    spool_file(app).write_bytes(json.dumps(line).encode() + b"\n" + encode(good))
    make_trail(client, 1)
    assert tracks(api) == [
        "good",
        "the database is back: 1 spooled event replayed in order",
        "GET /",
    ]
    assert set_aside(app) == [line]
