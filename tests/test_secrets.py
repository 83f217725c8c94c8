"""Secrets never leave: after a session that uses every credential path, no password, no raw
token and no Authorization header is in a database row, a log line or an error body.

The same scripted session runs in-process (rows of every table, every log record, every
response) and against `make run`'s gunicorn (its whole output: access log included).
"""

import json
import logging
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa

import config
from backend.roles import owner_engine
from tests.conftest import ADMIN, owner_url
from tests.serving import ADMIN as SERVED_ADMIN

ALICE_PASSWORDS = ("Alice-first-Secret-1", "Alice-second-Secret-2")
WRONG_PASSWORDS = ("Wrong-Secret-guess-1", "Wrong-Secret-guess-2", "Wrong-Secret-guess-3")
TOO_BIG = "Oversized-Secret-" + "x" * (64 * 1024)

# send(method, path, headers, json body) -> (status, body text)
Send = Callable[[str, str, dict, dict | None], tuple[int, str]]


@dataclass
class Session:
    """What a scripted session sent and got: the secrets to look for, and the bodies."""

    send: Send
    secrets: set[str] = field(default_factory=set)
    bodies: list[tuple[int, str, str]] = field(default_factory=list)  # status, path, body

    def call(
        self,
        method: str,
        path: str,
        *,
        basic: tuple[str, str] | None = None,
        token: str | None = None,
        body: dict | None = None,
    ) -> tuple[int, dict]:
        headers = {}
        if basic is not None:
            credentials = b64encode(":".join(basic).encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
            self.secrets |= {basic[1], credentials}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            self.secrets |= {
                value
                for name, value in body.items()
                if "password" in name and isinstance(value, str)
            }
        status, text = self.send(method, path, headers, body)
        self.bodies.append((status, path, text))
        reply = json.loads(text) if text.startswith("{") else {}
        if "token" in reply:
            self.secrets.add(reply["token"])
        return status, reply

    def token(self, username: str, password: str) -> str:
        status, reply = self.call("POST", "/login", basic=(username, password))
        assert status == 200, reply
        return reply["token"]

    def error_bodies(self) -> list[str]:
        """Every body but the logins' answers, which carry their new token by design."""
        return [
            text for status, path, text in self.bodies if not (path == "/login" and status == 200)
        ]


def scripted_session(send: Send, admin: tuple[str, str]) -> Session:
    """Log in every way, fail every way, change a password, disable a user, log out."""
    session = Session(send)
    call = session.call
    admin_token = session.token(*admin)
    status, reply = call("POST", "/login", body={"username": admin[0], "password": admin[1]})
    assert status == 200
    session.secrets.add(f"Bearer {reply['token']}")
    assert (
        call(
            "POST",
            "/v1/users",
            token=admin_token,
            body={"username": "alice", "password": ALICE_PASSWORDS[0]},
        )[0]
        == 201
    )
    alice_token = session.token("alice", ALICE_PASSWORDS[0])
    assert call("GET", "/v1/me", token=alice_token)[0] == 200
    assert call("POST", "/login", basic=("alice", WRONG_PASSWORDS[0]))[0] == 401
    for _ in range(5):  # an unknown user, until locked out
        call("POST", "/login", body={"username": "mallory", "password": WRONG_PASSWORDS[1]})
    assert call("POST", "/login", basic=("mallory", WRONG_PASSWORDS[1]))[0] == 429
    assert call("POST", "/login", body={"username": "alice", "password": 12345678})[0] == 400
    assert (
        call(
            "PUT",
            "/v1/me/password",
            token=alice_token,
            body={"current_password": WRONG_PASSWORDS[2], "new_password": ALICE_PASSWORDS[1]},
        )[0]
        == 403
    )
    assert (
        call(
            "PUT",
            "/v1/me/password",
            token=alice_token,
            body={"current_password": ALICE_PASSWORDS[0], "new_password": "short"},
        )[0]
        == 400
    )
    assert (
        call(
            "PUT",
            "/v1/me/password",
            token=alice_token,
            body={"current_password": ALICE_PASSWORDS[0], "new_password": ALICE_PASSWORDS[1]},
        )[0]
        == 200
    )
    assert call("GET", "/v1/me", token=alice_token)[0] == 401
    second_token = session.token("alice", ALICE_PASSWORDS[1])
    assert call("GET", "/logout", token=second_token)[0] == 200
    assert call("GET", "/logout", token=second_token)[0] == 401
    assert call("GET", "/v1/me", token="Not-a-real-Secret-token-value-0123456789abcdef")[0] == 401
    session.secrets.add("Not-a-real-Secret-token-value-0123456789abcdef")
    assert call("POST", "/login", body={"username": "alice", "password": TOO_BIG})[0] == 413
    alice_id = call("GET", "/v1/users", token=admin_token)[1]["items"][-1]["id"]
    assert (
        call("PATCH", f"/v1/users/{alice_id}", token=admin_token, body={"disabled": True})[0] == 200
    )
    assert call("POST", "/login", basic=("alice", ALICE_PASSWORDS[1]))[0] == 401
    assert call("GET", "/v1/logs?limit=1000", token=admin_token)[0] == 200
    session.secrets |= {f"Bearer {token}" for token in (admin_token, alice_token, second_token)}
    return session


def assert_no_secret(secrets: set[str], where: str, text: str) -> None:
    leaked = sorted(secret[:24] for secret in secrets if secret in text)
    assert not leaked, f"{where} holds {leaked}"


def every_row(connection: sa.Connection) -> str:
    """Every row of every table of the schema, as text."""
    schema = sa.MetaData()
    schema.reflect(connection)
    return "\n".join(
        repr(row) for table in schema.sorted_tables for row in connection.execute(sa.select(table))
    )


def test_no_secret_reaches_a_row_a_log_record_or_an_error_body(app, api, client, caplog):
    api.create_user(*ADMIN, is_admin=True)

    def send(method, path, headers, body):
        response = client.open(path, method=method, headers=headers, json=body)
        return response.status_code, response.get_data(as_text=True)

    with caplog.at_level(logging.DEBUG):
        session = scripted_session(send, ADMIN)
    assert len(session.secrets) >= 12
    for text in session.error_bodies():
        assert_no_secret(session.secrets, "a response body", text)
    records = "\n".join(caplog.handler.format(record) for record in caplog.records)
    assert "lockout of this account from this address" in records
    assert_no_secret(session.secrets, "the log", records)
    with app.app_context(), owner_engine().connect() as connection:  # every table, permits too
        rows = every_row(connection)
    assert "mallory" in rows and "login.locked" in rows
    assert_no_secret(session.secrets, "the database", rows)


@pytest.mark.serving
def test_no_secret_reaches_the_served_output_or_the_database(served, database_url):
    client, log = served

    def send(method, path, headers, body):
        reply = client.call(method, path, headers=headers, json_body=body)
        return reply.status, json.dumps(reply.body)

    session = scripted_session(send, SERVED_ADMIN)
    output = log.read_text()
    assert '"path": "/v1/me/password"' in output  # the access log is in there
    assert "lockout of this account from this address" in output  # and the app's log
    assert_no_secret(session.secrets, "the server's output", output)
    for text in session.error_bodies():
        assert_no_secret(session.secrets, "a response body", text)
    engine = sa.create_engine(config.database_url_for_sqlalchemy(owner_url(database_url)))
    try:
        with engine.connect() as connection:
            assert_no_secret(session.secrets, "the database", every_row(connection))
    finally:
        engine.dispose()
