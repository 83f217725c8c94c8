"""The live stream under gunicorn's gevent workers: more streams than the worker has database
connections all follow the trail, and the worker still serves other requests (a waiting
stream holds no connection)."""

import urllib.request

import pytest

from tests.relaying import wait_for
from tests.serving import ADMIN, serving
from tests.streaming import EventReader, rows_of

STREAMS = 5


def open_stream(client, token: str):
    request = urllib.request.Request(
        client.base_url + "/v1/logs/stream?event=login.success",
        headers={"Authorization": f"Bearer {token}"},
    )
    response = client.opener.open(request, timeout=10)
    assert response.status == 200
    # read1: what has arrived, without waiting for a full buffer
    return response, EventReader(iter(lambda: response.read1(65536), b""))


@pytest.mark.serving
def test_more_streams_than_connections_all_follow_the_trail(database_url, tmp_path):
    settings = {"GUNICORN_WORKERS": "1", "DATABASE_POOL_SIZE": "2", "EXPORTS_PER_WORKER": "1"}
    settings["STREAM_HEARTBEAT_SECONDS"] = "1"  # closed streams end at their next heartbeat
    with serving(database_url, tmp_path, **settings) as (client, _):
        token = client.post("/login", basic=ADMIN).body["token"]
        streams = [open_stream(client, token) for _ in range(STREAMS)]
        try:
            for _, events in streams:
                events.next_comment()
            assert client.get("/v1/me", token=token).status == 200
            login = client.post("/login", basic=ADMIN)
            assert login.status == 200
            received = [rows_of(events.next_events(1))[0] for _, events in streams]
        finally:
            for response, _ in streams:
                response.close()

    assert {row["event"] for row in received} == {"login.success"}
    assert len({row["id"] for row in received}) == 1


@pytest.mark.serving
def test_a_stream_its_client_leaves_is_recorded_with_the_rows_sent(database_url, tmp_path):
    settings = {"GUNICORN_WORKERS": "1", "STREAM_HEARTBEAT_SECONDS": "1"}
    with serving(database_url, tmp_path, **settings) as (client, _):
        token = client.post("/login", basic=ADMIN).body["token"]
        response, events = open_stream(client, token)
        try:
            events.next_comment()
            assert client.post("/login", basic=ADMIN).status == 200
            [row] = rows_of(events.next_events(1))
        finally:
            response.close()  # the worker finds the client gone at the next heartbeat

        def recorded():
            return client.get("/v1/logs?event=trail.stream", token=token).body["items"]

        wait_for(lambda: recorded() != [], "the trail.stream row")
        [recorded_row] = recorded()

    assert (recorded_row["user"], recorded_row["outcome"]) == (ADMIN[0], "success")
    details = recorded_row["details"]
    assert details.pop("after_id") < row["id"]  # the newest row when the stream began
    assert details == {
        "filters": {"event": "login.success"},
        "rows": 1,
        "last_id": row["id"],
        "ended": "client_left",
    }
