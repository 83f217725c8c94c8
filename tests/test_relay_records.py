"""The relay's own rows (source `system`): its start and stop, a sink starting to fail (once,
however often it is retried) and recovering (how long it was down, how far behind), written
through the app's writer and relayed like every other row; `--once` writes none."""

import os

from backend.audit.writer import writer
from backend.extensions import db
from backend.relay.cursors import SinkLock
from tests.conftest import Api
from tests.helpers import audit_table_unavailable, write
from tests.relaying import file_rows, relay_once, relaying, wait_for, write_sinks

FAILURES = 6


def rows_of(app, event: str):
    return Api(app, None).rows(event=event)


def hook(receiver) -> dict:
    return {"name": "hook", "kind": "webhook", "url": receiver.url, "secret": "shared-secret"}


def delivered_events(receiver) -> list[str]:
    return [row["event"] for row in receiver.rows()]


def relay_through_an_outage(app, sinks_file, receiver) -> None:
    """Two rows, then the relay with a webhook that answers 500 FAILURES times before a 200,
    until the receiver has the `sink.recovered` row."""
    write(app, track="row 1")
    write(app, track="row 2")
    receiver.answers = [500] * FAILURES
    write_sinks(sinks_file, hook(receiver))
    with relaying(app, backoff_cap=0.05):
        wait_for(lambda: "sink.recovered" in delivered_events(receiver), "sink.recovered")


def test_the_relay_records_its_start_naming_its_sinks(relay_app, sinks_file, tmp_path):
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(tmp_path / "t")})

    with relaying(relay_app):
        pass

    [row] = rows_of(relay_app, "relay.start")
    assert (row.source, row.level, row.outcome) == ("system", "INFO", "success")
    assert (row.target_type, row.target_id, row.target) == ("service", str(os.getpid()), "relay")
    assert row.details == {"pid": os.getpid(), "sinks": ["archive"]}


def test_the_relay_records_its_stop_with_each_sinks_cursor(relay_app, sinks_file, tmp_path):
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    write(relay_app, track="row 1")

    with relaying(relay_app):
        wait_for(lambda: out.exists() and len(file_rows(out)) == 2, "two rows delivered")

    [start] = rows_of(relay_app, "relay.start")
    [stop] = rows_of(relay_app, "relay.stop")
    assert (stop.source, stop.target_type, stop.target) == ("system", "service", "relay")
    assert stop.details == {"pid": os.getpid(), "delivered": {"archive": start.id}}


def test_the_relay_delivers_its_own_start_row(relay_app, sinks_file, tmp_path):
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    first = write(relay_app, track="row 1")

    with relaying(relay_app):
        wait_for(lambda: out.exists() and len(file_rows(out)) == 2, "two rows delivered")

    [start] = rows_of(relay_app, "relay.start")
    assert [(row["id"], row["event"]) for row in file_rows(out)] == [
        (first, "test.event"),
        (start.id, "relay.start"),
    ]


def test_a_failing_sink_writes_one_row_however_often_it_is_retried(relay_app, sinks_file, receiver):
    relay_through_an_outage(relay_app, sinks_file, receiver)

    assert receiver.requests - len(receiver.batches) == FAILURES  # refused, then retried
    [row] = rows_of(relay_app, "sink.failing")
    assert (row.source, row.level, row.outcome) == ("system", "ERROR", "error")
    assert (row.target_type, row.target) == ("sink", "hook")
    assert row.details == {
        "kind": "webhook",
        "error": f"{receiver.url}: answered 500",
        "delivered_id": 0,
    }


def test_a_recovered_sink_says_how_long_it_was_down_and_how_far_behind(
    relay_app, sinks_file, receiver
):
    relay_through_an_outage(relay_app, sinks_file, receiver)

    [failing] = rows_of(relay_app, "sink.failing")
    [row] = rows_of(relay_app, "sink.recovered")
    assert (row.source, row.level, row.outcome) == ("system", "WARNING", "success")
    assert (row.target_type, row.target) == ("sink", "hook")
    # Behind: the two rows, relay.start and sink.failing were waiting when the sink came back.
    assert (row.details["failed_attempts"], row.details["behind"]) == (FAILURES, failing.id)
    assert row.details["down_seconds"] > 0


def test_the_sink_receives_its_own_failing_and_recovered_rows_in_order(
    relay_app, sinks_file, receiver
):
    relay_through_an_outage(relay_app, sinks_file, receiver)

    stored = [(row.id, row.event) for row in Api(relay_app, None).rows()]
    delivered = [(row["id"], row["event"]) for row in receiver.rows()]
    assert delivered == [row for row in stored if row[1] != "relay.stop"]
    assert [event for _, event in delivered[-3:]] == [
        "relay.start",
        "sink.failing",
        "sink.recovered",
    ]


def test_relay_once_writes_no_rows_of_its_own(relay_app, sinks_file, receiver):
    ids = [write(relay_app, track="row 1")]
    receiver.answers = [500, 500]
    write_sinks(sinks_file, hook(receiver))

    result = relay_once(relay_app, "--max-backoff", "0.1")

    assert result.exit_code == 0, result.output
    assert [row.id for row in Api(relay_app, None).rows()] == ids


def test_a_relay_row_the_trail_cannot_take_is_spooled_not_lost(relay_app, sinks_file, tmp_path):
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(tmp_path / "t")})

    with audit_table_unavailable(relay_app), relaying(relay_app):
        pass

    with relay_app.app_context():
        writer().replay()
    assert [row.event for row in Api(relay_app, None).rows(source="system")] == [
        "audit.spooling",
        "relay.start",
        "relay.stop",
        "audit.replayed",
    ]


def test_a_hot_spares_stop_claims_no_sink_another_relay_delivers(relay_app, sinks_file, tmp_path):
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(tmp_path / "t")})
    with relay_app.app_context():
        other = SinkLock(db.engine, "archive")
        assert other.acquire()
    try:
        with relaying(relay_app):
            pass
    finally:
        other.release()

    [stop] = rows_of(relay_app, "relay.stop")
    assert stop.details == {"pid": os.getpid(), "delivered": {}}
