"""Control characters from clients forge no line: not in the application log, not in /v1/logs.

CR, LF, other C0 and C1 controls, ANSI escape sequences and Unicode's line separators, sent
in a user name, a user agent or a path, are stored as sent, come back from /v1/logs as one
JSON string each, and are escaped in the application log, one line per record.
"""

import logging
import re
import sys

import pytest
from flask.logging import default_handler

from tests.conftest import basic, bearer
from tests.helpers import assert_error, attempt
from tests.serving import ADMIN

FORGED_LINE = "[2026-11-21 10:00:00,000] INFO in views: admin logged in"
NASTY = f"eve\r\n{FORGED_LINE[:20]}\x1b[2J\x1b]0;pwned\x07\x85\u2028\u2029\x7f\t."
ESCAPED = f"eve\\r\\n{FORGED_LINE[:20]}\\x1b[2J\\x1b]0;pwned\\x07\\x85\\u2028\\u2029\\x7f\\t."
LINE_BREAKS = re.compile(rb"[\x00-\x1f]|\xe2\x80[\xa8\xa9]|\xc2\x85")


def trail(api, token: str, **filters) -> tuple[list[dict], bytes]:
    """The rows /v1/logs answers with, and the raw body they came in."""
    response = api.get("/v1/logs", token, query_string=filters)
    assert response.status_code == 200
    return response.get_json()["items"], response.data


def assert_one_line(body: bytes) -> None:
    """No raw control character or line separator: the body is one line of JSON."""
    assert not LINE_BREAKS.search(body.rstrip(b"\n"))


def test_a_login_name_with_control_characters_comes_back_as_one_json_string(api, client, users):
    assert (
        client.post("/login", json={"username": NASTY, "password": "whatever-1"}).status_code == 401
    )
    rows, body = trail(api, users["admin"], event="login.failure")
    assert [row["user"] for row in rows] == [NASTY]
    assert_one_line(body)


def test_a_user_agent_with_control_characters_comes_back_as_one_json_string(api, users):
    # Set in the WSGI environ directly: no HTTP client would send CR or LF in a header.
    api.get("/v1/me", users["alice"], environ_base={"HTTP_USER_AGENT": NASTY})
    rows, body = trail(api, users["admin"], user="alice", event="api.request")
    assert [row["user_agent"] for row in rows] == [NASTY]
    assert_one_line(body)


def test_a_path_with_control_characters_comes_back_as_one_json_string(api, users):
    api.get("/v1/me%0D%0Aforged%1B%5B2J%E2%80%A8", users["alice"])
    [row], body = trail(api, users["admin"], user="alice", event="api.request")
    assert row["path"] == "/v1/me\r\nforged\x1b[2J\u2028"
    assert row["track"] == "GET /v1/me\r\nforged\x1b[2J\u2028 -> 404"
    assert_one_line(body)


@pytest.mark.parametrize(
    "send",
    [
        lambda client: client.post("/login", headers=basic("al\x00ice", "whatever-1")),
        lambda client: client.post("/login", json={"username": "al\u0000ice", "password": "x"}),
    ],
    ids=["basic", "json"],
)
def test_a_nul_in_a_login_name_is_an_ordinary_failure(api, client, send):
    """PostgreSQL text cannot hold NUL: the name is stored with U+FFFD in its place."""
    response = send(client)
    assert response.status_code == 401
    [row] = api.rows(event="login.failure")
    assert (row.user, row.track) == ("al\ufffdice", "unknown user")


def test_an_unpaired_surrogate_in_a_login_name_is_an_ordinary_failure(api, client):
    """JSON's "\\ud800" is no UTF-8: the name is stored with U+FFFD in its place, like NUL."""
    response = client.post("/login", json={"username": "al\ud800ice", "password": "x"})
    assert response.status_code == 401
    [row] = api.rows(event="login.failure")
    assert (row.user, row.track) == ("al\ufffdice", "unknown user")


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/login", {"username": "alice", "password": "pass\udfffword"}, "password"),
        ("POST", "/v1/users", {"username": "bob", "password": "bob-pass\ud800word"}, "password"),
        (
            "PUT",
            "/v1/me/password",
            {"current_password": "x\ud800", "new_password": "long-enough-1"},
            "current_password",
        ),
        (
            "PUT",
            "/v1/me/password",
            {"current_password": "x", "new_password": "long-\ud800-enough"},
            "new_password",
        ),
    ],
)
def test_an_unpaired_surrogate_in_a_password_is_400_naming_it(
    api, users, method, path, body, field
):
    """No password hash can take it (nor could a password ever have held it): a bad value."""
    response = api.client.open(path, method=method, json=body, headers=bearer(users["admin"]))
    assert_error(response, 400, details={field})


@pytest.mark.parametrize(
    "name",
    ["bob\n", "bob\r\nINFO forged", "bob\x1b[31m", "bob\x85", "bob\u2028", "bob\t", "bob\x00"],
)
def test_a_new_users_name_may_not_hold_control_characters(api, users, name):
    response = api.post(
        "/v1/users", users["admin"], json={"username": name, "password": "bob-password-2"}
    )
    assert_error(response, 400, details={"username"})


def test_the_cli_refuses_such_a_name_too(runner):
    result = runner.invoke(
        args=["users", "create", "bob\r\nforged", "--password-stdin"], input="bob-password-2\n"
    )
    assert result.exit_code == 1
    assert "username" in result.output


def test_the_application_log_writes_one_line_per_record(app):
    """The formatter the app installs on Flask's handler, which every `backend.*` logger
    reaches (under pytest the records go to pytest's own handler instead)."""
    try:
        raise ValueError(f"bad name {NASTY}")
    except ValueError:
        record = logging.LogRecord(
            "backend.auth.lockout",
            logging.WARNING,
            __file__,
            1,
            "lockout: user %s from %s",
            (NASTY, "203.0.113.9"),
            sys.exc_info(),
        )
    line = default_handler.format(record)
    assert not LINE_BREAKS.search(line.encode())
    assert ESCAPED in line
    assert "Traceback (most recent call last):\\n" in line


@pytest.mark.serving
def test_a_served_lockout_logs_one_line_with_the_name_escaped(served):
    client, log = served
    for _ in range(5):
        assert client.post("/login", json_body={"username": NASTY, "password": "x"}).status == 401
    lines = log.read_text(errors="replace").splitlines()
    [lockout] = [line for line in lines if "lockout of this account from this address" in line]
    assert f"user {ESCAPED}" in lockout
    assert not any(line.startswith(FORGED_LINE[:20]) for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)
    # The trail has the name as sent.
    token = client.post("/login", basic=ADMIN).body["token"]
    rows = client.get("/v1/logs?event=login.failure", token=token).body["items"]
    assert {row["user"] for row in rows} == {NASTY}


def test_control_characters_never_reach_a_bearer_lookup_as_a_crash(api, client):
    """A token with control characters is simply not a token."""
    response = client.get("/v1/me", headers=bearer("abc\x1b[2Jdef"))
    assert response.status_code == 401


def test_a_lockout_logs_a_warning(caplog, api, client):
    with caplog.at_level(logging.WARNING, logger="backend.auth.lockout"):
        for _ in range(5):
            attempt(client, "eve", "wrong-password")
    [record] = [r for r in caplog.records if r.name == "backend.auth.lockout"]
    assert record.getMessage() == (
        "lockout of this account from this address for 60 s: user eve from 203.0.113.66"
    )
