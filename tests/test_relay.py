"""`flask audit relay` with the file and webhook sinks: every row, in id order, from a durable
cursor that never passes an undelivered row; filters; one relay a sink; a bad sinks file."""

from backend.extensions import db
from backend.models import SinkCursor
from backend.relay.cursors import SinkLock
from tests.helpers import write
from tests.relaying import file_rows, relay_once, write_sinks


def cursor_of(app, name: str) -> SinkCursor | None:
    with app.app_context():
        cursor = db.session.get(SinkCursor, name)
        db.session.expunge_all()
        return cursor


def trail_of(app, count: int, **fields) -> list[int]:
    return [write(app, track=f"row {n}", **fields) for n in range(count)]


def test_file_sink_receives_every_row_in_id_order_with_its_chain_fields(
    relay_app, sinks_file, tmp_path
):
    ids = trail_of(relay_app, 5)
    out = tmp_path / "out" / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})

    result = relay_once(relay_app)

    assert result.exit_code == 0, result.output
    rows = file_rows(out)
    assert [row["id"] for row in rows] == ids
    assert all({"id", "event_id", "prev_hash", "hash"} <= set(row) for row in rows)
    assert [row["prev_hash"] for row in rows[1:]] == [row["hash"] for row in rows[:-1]]


def test_file_sink_rows_are_the_export_rows(relay_app, sinks_file, tmp_path):
    trail_of(relay_app, 3)
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    relay_once(relay_app)

    exported = relay_app.test_cli_runner().invoke(args=["audit", "export"]).stdout

    assert out.read_text() == exported


def test_cursor_is_the_last_delivered_id(relay_app, sinks_file, tmp_path):
    ids = trail_of(relay_app, 4)
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(tmp_path / "t")})

    relay_once(relay_app)

    cursor = cursor_of(relay_app, "archive")
    assert (cursor.delivered_id, cursor.state, cursor.last_error) == (ids[-1], "running", None)


def test_a_second_run_delivers_only_new_rows(relay_app, sinks_file, tmp_path):
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    first = trail_of(relay_app, 3)
    relay_once(relay_app)
    second = trail_of(relay_app, 2)

    relay_once(relay_app)

    assert [row["id"] for row in file_rows(out)] == first + second


def test_batches_smaller_than_the_backlog_deliver_it_all(relay_app, sinks_file, tmp_path):
    ids = trail_of(relay_app, 7)
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "a", "kind": "file", "path": str(out), "batch_size": 2})

    relay_once(relay_app)

    assert [row["id"] for row in file_rows(out)] == ids


def test_level_filter_delivers_only_those_levels_and_moves_past_the_rest(
    relay_app, sinks_file, tmp_path
):
    write(relay_app, level="INFO")
    warning = write(relay_app, level="WARNING")
    last = write(relay_app, level="INFO")
    out = tmp_path / "trail.ndjson"
    write_sinks(
        sinks_file, {"name": "siem", "kind": "file", "path": str(out), "levels": ["WARNING"]}
    )

    relay_once(relay_app)

    assert [row["id"] for row in file_rows(out)] == [warning]
    assert cursor_of(relay_app, "siem").delivered_id == last


def test_source_and_event_filters_combine(relay_app, sinks_file, tmp_path):
    write(relay_app, source="auth", event="login.failure")
    wanted = write(relay_app, source="auth", event="login.success")
    write(relay_app, source="v1", event="login.success")
    out = tmp_path / "trail.ndjson"
    write_sinks(
        sinks_file,
        {
            "name": "s",
            "kind": "file",
            "path": str(out),
            "sources": ["auth"],
            "events": ["login.success"],
        },
    )

    relay_once(relay_app)

    assert [row["id"] for row in file_rows(out)] == [wanted]


def test_each_sink_has_its_own_cursor(relay_app, sinks_file, tmp_path, receiver):
    ids = trail_of(relay_app, 3)
    receiver.answers = [503] * 100  # the webhook is down throughout
    write_sinks(
        sinks_file,
        {"name": "archive", "kind": "file", "path": str(tmp_path / "t")},
        {"name": "hook", "kind": "webhook", "url": receiver.url, "secret": "shared-secret"},
    )

    result = relay_once(relay_app, "--max-backoff", "0.1")

    assert cursor_of(relay_app, "archive").delivered_id == ids[-1]
    assert cursor_of(relay_app, "hook").delivered_id == 0
    assert result.exit_code == 1 and ": hook" in result.output


def test_webhook_receives_signed_json_arrays_of_rows(relay_app, sinks_file, receiver):
    ids = trail_of(relay_app, 5)
    write_sinks(
        sinks_file,
        {
            "name": "hook",
            "kind": "webhook",
            "url": receiver.url,
            "secret": "shared-secret",
            "batch_size": 2,
        },
    )

    relay_once(relay_app)

    assert [len(batch) for batch in receiver.batches] == [2, 2, 1]
    assert [row["id"] for row in receiver.rows()] == ids
    assert receiver.bad_signatures == 0


def test_webhook_signed_with_another_secret_is_refused_and_not_counted_delivered(
    relay_app, sinks_file, receiver
):
    trail_of(relay_app, 2)
    write_sinks(
        sinks_file, {"name": "hook", "kind": "webhook", "url": receiver.url, "secret": "wrong"}
    )

    _run_until_failed(relay_app)

    assert receiver.bad_signatures >= 1
    cursor = cursor_of(relay_app, "hook")
    assert (cursor.delivered_id, cursor.state) == (0, "failing")
    assert "answered 401" in cursor.last_error


def _run_until_failed(app) -> None:
    """The relay until the sink has failed at least once, then stopped."""
    import threading

    from backend.relay.command import configured_sinks
    from backend.relay.runner import relay

    with app.app_context():
        stop = threading.Event()
        sinks = configured_sinks()
        engine = db.engine

        def watch():
            while not stop.is_set():
                cursor = cursor_of(app, sinks[0].name)
                if cursor is not None and cursor.failures >= 1:
                    stop.set()
                stop.wait(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        relay(engine, sinks, stop, poll=0.05, backoff_cap=0.1)
        watcher.join()


def test_webhook_failures_are_retried_until_a_2xx(relay_app, sinks_file, receiver):
    ids = trail_of(relay_app, 3)
    receiver.answers = [500, 502, 404]
    write_sinks(
        sinks_file,
        {"name": "hook", "kind": "webhook", "url": receiver.url, "secret": "shared-secret"},
    )

    relay_once(relay_app, "--max-backoff", "0.1")

    assert [row["id"] for row in receiver.rows()] == ids
    assert receiver.requests == 4
    cursor = cursor_of(relay_app, "hook")
    assert (cursor.delivered_id, cursor.failures, cursor.state) == (ids[-1], 3, "running")


def test_webhook_that_hangs_past_the_timeout_is_retried(relay_app, sinks_file, receiver):
    ids = trail_of(relay_app, 2)
    receiver.hang = 1.5
    write_sinks(
        sinks_file,
        {
            "name": "hook",
            "kind": "webhook",
            "url": receiver.url,
            "secret": "shared-secret",
            "timeout": 0.5,
        },
    )

    _run_until_failed(relay_app)

    cursor = cursor_of(relay_app, "hook")
    assert cursor.delivered_id == 0
    assert "Timeout" in cursor.last_error
    receiver.hang = 0.2  # slow, but within the timeout
    relay_once(relay_app, "--max-backoff", "0.1")
    assert ids == sorted({row["id"] for row in receiver.rows()})
    assert cursor_of(relay_app, "hook").delivered_id == ids[-1]


def test_a_sink_locked_by_another_relay_is_left_to_it(relay_app, sinks_file, tmp_path):
    trail_of(relay_app, 2)
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    with relay_app.app_context():
        other = SinkLock(db.engine, "archive")
        assert other.acquire()
        try:
            result = relay_once(relay_app)
        finally:
            other.release()

    assert result.exit_code == 1
    assert "not caught up: archive" in result.output
    assert not out.exists()
    assert cursor_of(relay_app, "archive") is None


def test_a_released_lock_lets_the_spare_relay_deliver(relay_app, sinks_file, tmp_path):
    ids = trail_of(relay_app, 2)
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "archive", "kind": "file", "path": str(out)})
    with relay_app.app_context():
        other = SinkLock(db.engine, "archive")
        assert other.acquire()
        other.release()

    relay_once(relay_app)

    assert [row["id"] for row in file_rows(out)] == ids


def test_outcome_filter_delivers_the_refusals_only(relay_app, sinks_file, tmp_path):
    write(relay_app, outcome="success")
    denied = write(relay_app, outcome="denied")
    failed = write(relay_app, outcome="failure")
    out = tmp_path / "trail.ndjson"
    write_sinks(
        sinks_file,
        {"name": "s", "kind": "file", "path": str(out), "outcomes": ["denied", "failure"]},
    )

    relay_once(relay_app)

    rows = file_rows(out)
    assert [(row["id"], row["outcome"]) for row in rows] == [
        (denied, "denied"),
        (failed, "failure"),
    ]


def test_rows_carry_the_structured_record(relay_app, sinks_file, tmp_path):
    write(relay_app, target_type="user", target="alice", details={"reason": "locked"})
    out = tmp_path / "trail.ndjson"
    write_sinks(sinks_file, {"name": "s", "kind": "file", "path": str(out)})

    relay_once(relay_app)

    [row] = file_rows(out)
    assert (row["target_type"], row["target"], row["details"]) == (
        "user",
        "alice",
        {"reason": "locked"},
    )
