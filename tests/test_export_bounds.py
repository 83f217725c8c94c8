"""The bounds on GET /v1/logs/export within one app (backend/v1/export_guard.py): exports at
once per user and per worker, and the cut-off of a client that reads nothing. Served for real,
with raw sockets that never read: tests/test_export_bounds_served.py."""

import gc
import time

import pytest
import sqlalchemy as sa

from backend.audit import export
from backend.extensions import db
from backend.models import User
from backend.v1 import export_guard
from tests.conftest import bearer
from tests.helpers import assert_error, write


@pytest.fixture
def trail(api, users):
    """The users' logins and a dozen more rows, so that an export is several chunks."""
    for number in range(12):
        write(api.app, user="admin", track=f"row {number}")
    return users


@pytest.fixture
def start_export(api):
    """Start an export as the holder of a token: its response, the body not read yet (as a
    client that has read nothing yet). Each is closed at the end, as a server would."""
    started = []

    def start(token):
        started.append(api.client.get("/v1/logs/export", headers=bearer(token), buffered=False))
        return started[-1]

    yield start
    for response in started:
        response.close()


def assert_refused(response, message: str) -> None:
    """A 429 in the JSON error shape, saying `message`, with Retry-After."""
    assert assert_error(response, 429)["message"] == message
    assert response.headers["Retry-After"] == "5"


@pytest.mark.settings(EXPORTS_PER_USER="1")
def test_a_users_export_past_their_bound_is_429_with_retry_after(api, trail, start_export):
    running = start_export(trail["alice"])
    assert running.status_code == 200
    assert_refused(
        start_export(trail["alice"]), "You have 1 exports running; wait for one to finish."
    )


@pytest.mark.settings(EXPORTS_PER_USER="1")
def test_another_users_export_is_not_held_to_that_bound(api, trail, start_export):
    running = start_export(trail["alice"])
    other = start_export(trail["bob"])
    assert (running.status_code, other.status_code) == (200, 200)


@pytest.mark.settings(EXPORTS_PER_WORKER="1")
def test_an_export_past_the_workers_bound_is_429_with_retry_after(api, trail, start_export):
    assert start_export(trail["alice"]).status_code == 200
    assert_refused(start_export(trail["bob"]), "Too many exports are running; try again shortly.")


@pytest.mark.settings(EXPORTS_PER_USER="1")
def test_an_export_read_whole_or_left_gives_its_slot_back(api, trail, start_export):
    start_export(trail["alice"]).close()  # left before its first byte
    read = start_export(trail["alice"])
    assert read.status_code == 200 and read.get_data()
    read.close()
    assert start_export(trail["alice"]).status_code == 200


@pytest.mark.settings(EXPORT_STALL_TIMEOUT="1")
def test_a_client_that_reads_nothing_for_the_limit_is_cut_off(
    api, trail, start_export, monkeypatch
):
    monkeypatch.setattr(export, "FETCH_ROWS", 2)
    response = start_export(trail["admin"])
    chunks = iter(response.response)
    assert next(chunk for chunk in chunks if chunk).count(b"\n") == 2
    time.sleep(1.5)  # the server holds the chunk; the client takes nothing
    assert list(chunks) == []  # nothing more is sent
    response.close()
    with api.app.app_context():
        assert db.engine.pool.checkedout() == 0
    [row] = api.rows(event="trail.export")
    assert (row.source, row.level, row.user, row.status, row.request_id) == (
        "v1",
        "WARNING",
        "admin",
        200,
        response.headers["X-Request-ID"],
    )
    assert row.track == (
        "GET /v1/logs/export cut off: the client read nothing for 1 s; 0 rows (0 bytes) sent"
    )
    assert (row.outcome, row.details["reason"], row.details["rows"]) == ("denied", "stalled", 0)


@pytest.mark.settings(EXPORT_STALL_TIMEOUT="1")
def test_a_slow_reader_that_keeps_reading_is_not_cut_off(api, trail, start_export, monkeypatch):
    monkeypatch.setattr(export, "FETCH_ROWS", 2)
    response = start_export(trail["admin"])
    chunks = []
    for chunk in response.response:  # longer than the limit in all, never that long at once
        chunks.append(chunk)
        time.sleep(0.25)
    response.close()
    sent = sum(chunk.count(b"\n") for chunk in chunks)
    assert sent == len(api.rows()) - 2  # all but its own: api.request, then trail.export
    [row] = api.rows(event="trail.export")
    assert (row.level, row.outcome, row.details["rows"]) == ("INFO", "success", sent)


def opened_and_closed():
    """An export's chunks that say whether they were closed (their connection released)."""
    state = {"closed": False}

    def chunks():
        try:
            yield b"chunk"
        finally:
            state["closed"] = True

    return state, chunks()


@pytest.mark.settings(EXPORTS_PER_USER="1")
def test_an_export_dropped_unclosed_releases_its_chunks_and_slot(api, trail):
    """A response replaced before the server closes it (the 503 of an audit row that failed)."""
    state, chunks = opened_and_closed()
    with api.app.test_request_context("/v1/logs/export"):
        user = db.session.scalar(sa.select(User).where(User.username == "alice"))
        guarded = export_guard.guarded(user, lambda progress: chunks, {})
        next(iter(guarded))  # started: the chunks hold their connection
        del guarded
        gc.collect()
        assert state["closed"]
        export_guard.guarded(
            user, lambda progress: (chunk for chunk in ()), {}
        ).close()  # a slot is free


@pytest.mark.settings(EXPORTS_PER_USER="1")
def test_an_export_that_fails_to_start_releases_its_chunks_and_slot(api, trail, monkeypatch):
    state, chunks = opened_and_closed()
    next(chunks)  # opened: a COPY under way
    monkeypatch.setattr(export_guard, "request_fields", lambda: 1 / 0)
    with api.app.test_request_context("/v1/logs/export"):
        user = db.session.scalar(sa.select(User).where(User.username == "alice"))
        with pytest.raises(ZeroDivisionError):
            export_guard.guarded(user, lambda progress: chunks, {})
        assert state["closed"]
        monkeypatch.undo()
        export_guard.guarded(
            user, lambda progress: (chunk for chunk in ()), {}
        ).close()  # a slot is free
