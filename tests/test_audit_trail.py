"""The trail itself: what every request leaves, the signals behind it, and its durability."""

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from blinker import ANY
from flask import current_app

from backend.extensions import db
from backend.models import User
from backend.signals import auth_log, main_log, v1_log
from tests.conftest import ALICE, basic, bearer
from tests.helpers import (
    CRASH_MESSAGE,
    DISK_FULL,
    add_crashing_route,
    assert_error,
    audit_table_unavailable,
)

CLIENT_IP = "203.0.113.9"


def call_as(api, users, who: str | None, path: str):
    """GET `path` from CLIENT_IP with `who`'s token (None: no token at all)."""
    return api.get(path, users[who] if who else None, environ_base={"REMOTE_ADDR": CLIENT_IP})


def only_request_row(api, response):
    """The one api.request row in the trail, checked to be the one of `response`."""
    [row] = api.rows(event="api.request")
    assert row.request_id == response.headers["X-Request-ID"]
    return row


@contextmanager
def captured(signal) -> Iterator[list[tuple[object, dict]]]:
    """Every (sender, keyword arguments) that `signal` sends inside the block."""
    sent: list[tuple[object, dict]] = []

    def receiver(sender, **kwargs):
        sent.append((sender, kwargs))

    with signal.connected_to(receiver, ANY):
        yield sent


def add_half_done_route(app) -> None:
    """GET /v1/half-done: stages a user, records an event, then rolls its session back."""

    def half_done():
        db.session.add(User(username="ghost", password_hash="never-committed"))
        v1_log.send(
            current_app._get_current_object(),
            event="test.half_done",
            level="INFO",
            status=200,
            track="staged a user, then rolled back",
        )
        db.session.rollback()
        return {"done": "half"}

    app.add_url_rule("/v1/half-done", "half_done", half_done)


# -- api.request: one row per /v1 request, whatever its outcome -------------------------------


@pytest.mark.parametrize(
    ("who", "path", "status", "level"),
    [
        ("alice", "/v1/me", 200, "INFO"),
        ("alice", "/v1/users", 403, "WARNING"),
        ("alice", "/v1/no-such-thing", 404, "WARNING"),
        ("alice", "/v1/logs?limit=0", 400, "WARNING"),
    ],
    ids=["200", "403-not-admin", "404-unknown-path", "400-bad-parameter"],
)
def test_a_v1_request_of_a_user_leaves_one_api_request_row(api, users, who, path, status, level):
    response = call_as(api, users, who, path)
    assert response.status_code == status
    row = only_request_row(api, response)
    assert (row.source, row.level, row.status) == ("v1", level, status)
    assert (row.method, row.path) == ("GET", path.split("?")[0])
    assert (row.user, row.ip) == (who, CLIENT_IP)


def test_a_v1_request_without_a_token_leaves_a_warning_row_with_no_user(api, users):
    response = call_as(api, users, None, "/v1/me")
    assert response.status_code == 401
    row = only_request_row(api, response)
    assert (row.source, row.level, row.status, row.method, row.path) == (
        "v1",
        "WARNING",
        401,
        "GET",
        "/v1/me",
    )
    assert (row.user, row.ip) == (None, CLIENT_IP)


def test_a_v1_request_with_a_revoked_token_leaves_a_row_with_no_user(api, users, client):
    client.get("/logout", headers=bearer(users["alice"]))
    response = call_as(api, users, "alice", "/v1/no-such-thing")
    assert response.status_code == 404
    assert only_request_row(api, response).user is None


def test_each_request_gets_its_own_request_id(api, users):
    first, second = (call_as(api, users, "alice", "/v1/me") for _ in range(2))
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert ids[0] != ids[1]
    assert [row.request_id for row in api.rows(event="api.request")] == ids


def test_a_non_v1_request_leaves_no_api_request_row(api, client):
    client.get("/no-such-thing")
    client.get("/")
    assert [(row.source, row.event) for row in api.rows()] == [("main", "index.view")]


# -- an unhandled exception -------------------------------------------------------------------


def test_a_crash_answers_a_500_that_leaks_nothing(app, api):
    token = add_crashing_route(app, api)
    response = api.get("/v1/boom", token)
    assert_error(response, 500)
    text = response.get_data(as_text=True)
    for leak in (CRASH_MESSAGE, "hunter2", "RuntimeError", "Traceback", "boom", 'File "'):
        assert leak not in text


def test_a_crash_leaves_a_request_exception_row(app, api):
    token = add_crashing_route(app, api)
    response = api.get("/v1/boom", token)
    [row] = api.rows(event="request.exception")
    assert (row.source, row.level, row.user, row.status) == ("app", "ERROR", "alice", 500)
    assert (row.method, row.path) == ("GET", "/v1/boom")
    assert row.request_id == response.headers["X-Request-ID"]
    assert "RuntimeError" in row.track and CRASH_MESSAGE in row.track


def test_a_crash_leaves_an_api_request_row_at_error(app, api):
    token = add_crashing_route(app, api)
    response = api.get("/v1/boom", token)
    row = only_request_row(api, response)
    assert (row.source, row.level, row.status, row.user) == ("v1", "ERROR", 500, "alice")


# -- the signals ------------------------------------------------------------------------------


def test_a_v1_request_sends_v1_log_once_from_the_app(app, api, users):
    with captured(v1_log) as sent:
        api.get("/v1/me", users["alice"])
    [(sender, kwargs)] = sent
    assert sender is app
    assert {k: kwargs[k] for k in ("event", "level", "user", "status")} == {
        "event": "api.request",
        "level": "INFO",
        "user": "alice",
        "status": 200,
    }
    assert kwargs["track"].startswith("GET /v1/me")


def test_a_non_v1_request_sends_no_v1_log(client):
    with captured(v1_log) as sent:
        client.get("/healthz")
        client.get("/no-such-thing")
    assert sent == []


def test_a_failed_login_sends_auth_log_from_the_app_without_the_password(app, api, client):
    api.create_user(*ALICE)
    with captured(auth_log) as sent:
        client.post("/login", headers=basic("alice", "Not-Her-Password-7"))
    [(sender, kwargs)] = sent
    assert sender is app
    assert kwargs == {
        "event": "login.failure",
        "level": "WARNING",
        "user": "alice",
        "status": 401,
        "track": "invalid password",
        "outcome": "failure",
        "reason": "invalid_password",
    }
    assert "Not-Her-Password-7" not in repr(kwargs)


def test_the_index_sends_main_log_from_the_app(app, client):
    with captured(main_log) as sent:
        client.get("/")
    [(sender, kwargs)] = sent
    assert sender is app
    assert (kwargs["event"], kwargs["status"]) == ("index.view", 200)


def test_the_receivers_still_record_after_garbage_collection(app, api, client):
    gc.collect()
    token = add_crashing_route(app, api)
    api.get("/v1/me", token)
    api.get("/v1/boom", token)
    client.get("/")
    gc.collect()
    client.post("/login", headers=basic("alice", "not-her-password"))
    sources = [(row.source, row.event) for row in api.rows()]
    assert sources == [
        ("auth", "login.success"),
        ("v1", "api.request"),
        ("app", "request.exception"),
        ("v1", "api.request"),
        ("main", "index.view"),
        ("auth", "login.failure"),
    ]


# -- fail closed: neither the database nor the spool (on a full disk) takes the row ------------


@DISK_FULL
def test_a_v1_request_whose_row_cannot_be_written_answers_503(app, api, users):
    with audit_table_unavailable(app):
        response = api.get("/v1/me", users["alice"])
    assert_error(response, 503)
    assert "alice" not in response.get_data(as_text=True)
    assert api.rows(event="api.request") == []


@DISK_FULL
def test_a_login_whose_row_cannot_be_written_answers_503_without_a_token(app, api, client):
    api.create_user(*ALICE)
    with audit_table_unavailable(app):
        response = client.post("/login", headers=basic(*ALICE))
    assert_error(response, 503)
    assert "token" not in response.get_data(as_text=True)
    assert api.rows() == []


# -- the writer's own transaction -------------------------------------------------------------


def test_a_row_survives_the_rollback_of_the_request_session(app, api, client):
    add_half_done_route(app)
    assert client.get("/v1/half-done").status_code == 200
    [row] = api.rows(event="test.half_done")
    assert (row.source, row.track) == ("v1", "staged a user, then rolled back")


def test_the_audit_commit_does_not_commit_the_request_session(app, api, client):
    add_half_done_route(app)
    assert client.get("/v1/half-done").status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(User).where(User.username == "ghost")) is None


def test_a_login_failure_row_survives_the_failed_request(api, client):
    api.create_user(*ALICE)
    client.post("/login", json={"username": "alice", "password": "not-her-password"})
    [row] = api.rows(event="login.failure")
    assert (row.user, row.status) == ("alice", 401)


def test_healthz_writes_no_row(api, client):
    assert client.get("/healthz").status_code == 200
    assert api.rows() == []


def test_the_index_writes_a_main_row(api, client):
    response = client.get("/", environ_base={"REMOTE_ADDR": CLIENT_IP})
    [row] = api.rows()
    assert (row.source, row.event, row.status, row.user, row.ip) == (
        "main",
        "index.view",
        200,
        None,
        CLIENT_IP,
    )
    assert (row.method, row.path) == ("GET", "/")
    assert row.request_id == response.headers["X-Request-ID"]
