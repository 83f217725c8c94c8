"""GET /v1/logs/stream: the trail live as Server-Sent Events, with the filters and visibility
of /v1/logs, resuming after Last-Event-ID, heartbeats, and a bound on streams per worker."""

from contextlib import contextmanager

import pytest

from tests.conftest import Api, bearer
from tests.helpers import assert_error, write
from tests.streaming import EventReader, rows_of


@contextmanager
def streaming(client, token: str, query: str = "", headers: dict | None = None):
    response = client.get(f"/v1/logs/stream{query}", headers=bearer(token) | (headers or {}))
    assert response.status_code == 200, response.get_data()
    assert response.content_type == "text/event-stream; charset=utf-8"
    try:
        yield EventReader(response.response)
    finally:
        response.close()


def export_lines(runner) -> dict[int, str]:
    import json

    lines = runner.invoke(args=["audit", "export"]).stdout.splitlines()
    return {json.loads(line)["id"]: line for line in lines}


def test_rows_after_after_id_come_as_log_events_with_the_export_row(app, client, users):
    ids = [write(app, track=f"r{n}") for n in range(3)]

    with streaming(client, users["admin"], f"?after_id={ids[0]}") as events:
        received = events.next_events(2)

    exported = export_lines(app.test_cli_runner())
    assert [int(event["id"]) for event in received] == ids[1:]
    assert [event["data"] for event in received] == [exported[i] for i in ids[1:]]


def test_last_event_id_resumes_after_it(app, client, users):
    ids = [write(app) for _ in range(3)]

    with streaming(client, users["admin"], headers={"Last-Event-ID": str(ids[1])}) as events:
        [event] = events.next_events(1)

    assert int(event["id"]) == ids[2]


def test_without_a_position_only_new_rows_come(app, client, users):
    write(app, track="old")
    with streaming(client, users["admin"], "?event=test.event") as events:
        events.next_comment()  # the stream has started
        new = write(app, track="new")
        [event] = events.next_events(1)

    assert rows_of([event])[0]["id"] == new


def test_other_users_see_only_their_own_rows(app, client, users):
    write(app, user="bob")
    mine = write(app, user="alice")

    with streaming(client, users["alice"], "?after_id=0&event=test.event") as events:
        received = rows_of(events.next_events(1))

    assert [row["id"] for row in received] == [mine]


def test_filters_select_the_rows(app, client, users):
    write(app, level="INFO")
    warning = write(app, level="WARNING")

    with streaming(client, users["admin"], "?after_id=0&level=WARNING") as events:
        [row] = rows_of(events.next_events(1))

    assert row["id"] == warning


@pytest.mark.settings(STREAM_HEARTBEAT_SECONDS="0.2", STREAM_POLL_SECONDS="0.05")
def test_a_quiet_stream_sends_heartbeat_comments(client, users):
    with streaming(client, users["admin"]) as events:
        assert events.next_comment() == "stream of the audit trail"
        assert events.next_comment() == "heartbeat"


@pytest.mark.settings(STREAM_HEARTBEAT_SECONDS="0.2", STREAM_POLL_SECONDS="0.05")
def test_a_revoked_token_ends_its_stream_at_the_next_heartbeat(client, users):
    stream_then_revoke(client, users["alice"])


def stream_then_revoke(client, token: str) -> None:
    """Open a stream with `token`, revoke it (GET /logout), and see the stream end."""
    with streaming(client, token) as events:
        events.next_comment()
        assert client.get("/logout", headers=bearer(token)).status_code == 200
        with pytest.raises(StopIteration):
            events.next_comment()


@pytest.mark.settings(STREAMS_PER_WORKER="1")
def test_a_stream_past_the_workers_bound_is_a_503_with_retry_after(client, users):
    with streaming(client, users["admin"]) as events:
        events.next_comment()
        refused = client.get("/v1/logs/stream", headers=bearer(users["admin"]))

        assert_error(refused, 503)
        assert refused.headers["Retry-After"] == "5"
    with streaming(client, users["admin"]) as events:  # the slot is free again
        assert events.next_comment() == "stream of the audit trail"


@pytest.mark.parametrize(
    ("query", "headers", "field"),
    [
        ("?after_id=x", {}, "after_id"),
        ("?level=LOUD", {}, "level"),
        ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ("?order=asc", {}, "order"),
    ],
)
def test_bad_positions_and_filters_are_400_naming_them(client, users, query, headers, field):
    response = client.get(f"/v1/logs/stream{query}", headers=bearer(users["admin"]) | headers)

    assert_error(response, 400, {field})


def test_stream_needs_a_token(client):
    assert_error(client.get("/v1/logs/stream"), 401)


# -- the stream's end, a read of the trail on its own record ---------------------------------


def stream_rows(app):
    return Api(app, None).rows(event="trail.stream")


@pytest.mark.settings(STREAM_HEARTBEAT_SECONDS="0.2", STREAM_POLL_SECONDS="0.05")
def test_a_stream_the_client_closes_leaves_a_row_with_the_rows_sent(app, client, users):
    ids = [write(app, track=f"r{n}") for n in range(3)]
    with streaming(client, users["admin"], "?after_id=0&event=test.event") as events:
        events.next_events(3)
        events.next_comment()  # the server went on: it took the rows

    [row] = stream_rows(app)
    assert (row.source, row.user, row.level, row.outcome) == ("v1", "admin", "INFO", "success")
    assert (row.target_type, row.status) == ("trail", 200)
    assert row.details == {
        "filters": {"event": "test.event"},
        "rows": 3,
        "after_id": 0,
        "last_id": ids[-1],
        "ended": "client_left",
    }
    assert row.track == (
        "GET /v1/logs/stream?after_id=0&event=test.event ended, the client left: 3 rows sent"
    )


@pytest.mark.settings(STREAM_HEARTBEAT_SECONDS="0.2", STREAM_POLL_SECONDS="0.05")
def test_a_stream_its_revoked_token_ended_leaves_a_denied_row(app, client, users):
    stream_then_revoke(client, users["alice"])

    [row] = stream_rows(app)
    assert (row.user, row.level, row.outcome) == ("alice", "WARNING", "denied")
    assert (row.details["reason"], row.details["ended"]) == ("token_invalid", "token_invalid")


def test_a_stream_refused_for_a_bad_position_leaves_no_stream_row(app, client, users):
    refused = client.get("/v1/logs/stream?after_id=x", headers=bearer(users["admin"]))

    assert_error(refused, 400, {"after_id"})
    assert stream_rows(app) == []
