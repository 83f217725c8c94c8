"""POST /login and GET /logout, and the audit rows they leave."""

from base64 import b64encode
from datetime import timedelta

import pytest
import sqlalchemy as sa
from blinker import ANY

from backend.clock import moved, utcnow
from backend.extensions import db
from backend.models import User
from backend.signals import auth_log
from tests.conftest import ALICE, basic, bearer
from tests.helpers import assert_error


def test_login_with_basic_auth_gives_a_bearer_token(api, client):
    api.create_user(*ALICE)
    response = client.post("/login", headers=basic(*ALICE))
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert len(body["token"]) == 43  # 256 random bits, URL-safe base64
    assert body["expires_at"].endswith("Z")
    assert body["user"]["username"] == "alice" and body["user"]["is_admin"] is False
    assert api.get("/v1/me", body["token"]).get_json()["username"] == "alice"


def test_login_with_a_json_body_gives_a_bearer_token(api, client):
    api.create_user(*ALICE)
    response = client.post("/login", json={"username": ALICE[0], "password": ALICE[1]})
    assert response.status_code == 200
    assert api.get("/v1/me", response.get_json()["token"]).status_code == 200


def test_every_login_makes_a_new_token(api):
    api.create_user(*ALICE)
    assert api.login(*ALICE) != api.login(*ALICE)


def test_login_success_leaves_a_row(api):
    api.create_user(*ALICE)
    api.login(*ALICE)
    [row] = api.rows(event="login.success")
    assert (row.source, row.level, row.user, row.ip) == ("auth", "INFO", "alice", "127.0.0.1")
    assert row.track == "logged in"
    assert (row.method, row.path, row.status) == ("POST", "/login", 200)


def test_unknown_user_and_wrong_password_look_the_same(api, client):
    api.create_user(*ALICE)
    wrong_password = client.post("/login", headers=basic("alice", "not-her-password"))
    unknown_user = client.post("/login", headers=basic("mallory", "whatever-password"))
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.get_json() == unknown_user.get_json()
    assert wrong_password.headers["WWW-Authenticate"] == unknown_user.headers["WWW-Authenticate"]


def test_login_failures_leave_rows_of_the_same_shape(api, client):
    api.create_user(*ALICE)
    client.post("/login", headers=basic("alice", "not-her-password"))
    client.post("/login", json={"username": "mallory", "password": "whatever-password"})
    wrong, unknown = api.rows(event="login.failure")
    for row, user in ((wrong, "alice"), (unknown, "mallory")):
        assert (row.source, row.level, row.user, row.ip, row.status) == (
            "auth",
            "WARNING",
            user,
            "127.0.0.1",
            401,
        )
    assert (wrong.track, unknown.track) == ("invalid password", "unknown user")


def test_login_without_credentials_is_challenged_not_recorded(api, client):
    response = client.post("/login")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert api.rows(source="auth") == []


def test_a_bearer_header_whose_token_decodes_as_credentials_logs_nobody_in(api, client):
    """Only the Basic scheme carries a password: another scheme's value is no credentials,
    even one that happens to decode as `name:password` (a real token does, now and then)."""
    api.create_user(*ALICE)
    smuggled = b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()
    response = client.post("/login", headers={"Authorization": f"Bearer {smuggled}"})
    assert_error(response, 401)
    assert api.rows() == []


def test_a_bearer_header_beside_a_json_body_leaves_the_body_to_log_in(api, client):
    api.create_user(*ALICE)
    smuggled = b64encode(b"nobody:nothing").decode()
    response = client.post(
        "/login",
        headers={"Authorization": f"Bearer {smuggled}"},
        json={"username": ALICE[0], "password": ALICE[1]},
    )
    assert response.status_code == 200
    assert response.get_json()["user"]["username"] == ALICE[0]


def test_login_body_with_a_bad_field_is_400_naming_it(client):
    response = client.post("/login", json={"username": 7})
    error = assert_error(response, 400, details={"username", "password"})
    assert error["details"] == {
        "username": ["Not a valid string."],
        "password": ["Missing data for required field."],
    }


def test_login_body_that_is_not_json_is_400(client):
    response = client.post("/login", data="{oops", content_type="application/json")
    assert assert_error(response, 400)["message"] == "The request body is not valid JSON."


def test_logout_revokes_the_token(api, client):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    response = client.get("/logout", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"message": "logged out"}
    assert api.get("/v1/me", token).status_code == 401
    assert client.get("/logout", headers=bearer(token)).status_code == 401


def test_logout_leaves_a_row(api, client):
    api.create_user(*ALICE)
    client.get("/logout", headers=bearer(api.login(*ALICE)))
    [row] = api.rows(event="logout")
    assert (row.source, row.level, row.user, row.track) == ("auth", "INFO", "alice", "logged out")


def failed_logout_row(api, client, token: str):
    """GET /logout with `token`: it must be refused; return the one logout row it left."""
    response = client.get("/logout", headers=bearer(token))
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    [row] = [row for row in api.rows(event="logout") if row.status == 401]
    assert (row.source, row.level, row.method, row.path) == ("auth", "WARNING", "GET", "/logout")
    return row


def test_a_logout_with_a_revoked_token_is_401_and_leaves_a_row(api, client):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    client.get("/logout", headers=bearer(token))
    row = failed_logout_row(api, client, token)
    assert (row.user, row.track) == ("alice", "revoked token")


def test_a_logout_with_an_expired_token_is_401_and_leaves_a_row(api, client):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    with moved(timedelta(seconds=api.app.config["TOKEN_TTL"] + 1)):
        row = failed_logout_row(api, client, token)
    assert (row.user, row.track) == ("alice", "expired token")


def test_a_logout_with_an_unknown_token_is_401_and_leaves_a_row(api, client):
    row = failed_logout_row(api, client, "not-a-token-anyone-was-given")
    assert (row.user, row.track) == (None, "unknown token")


def test_a_logout_with_the_token_of_a_disabled_user_names_the_user(api, client, users):
    with api.app.app_context():
        db.session.execute(
            sa.update(User).where(User.username == "alice").values(disabled_at=utcnow())
        )
        db.session.commit()
    row = failed_logout_row(api, client, users["alice"])
    assert (row.user, row.track) == ("alice", "disabled user")


def test_a_logout_without_a_token_is_challenged_not_recorded(api, client):
    response = client.get("/logout")
    assert response.status_code == 401
    assert api.rows(source="auth") == []


def test_login_sends_auth_log_with_the_app_as_sender(app, api):
    api.create_user(*ALICE)
    received = []
    with auth_log.connected_to(lambda sender, **kw: received.append((sender, kw)), ANY):
        api.login(*ALICE)
    [(sender, event)] = received
    assert sender is app
    assert event["event"] == "login.success" and event["user"] == "alice"


def test_password_and_token_appear_in_no_row(api, client):
    api.create_user(*ALICE)
    token = api.login(*ALICE)
    client.post("/login", json={"username": "alice", "password": "a-wrong-Secret-9"})
    api.get("/v1/me", token)
    api.get("/v1/logs", token)
    client.get("/logout", headers=bearer(token))
    rows = api.rows()
    assert len(rows) == 5
    dumped = "\n".join(repr(row.__dict__) for row in rows)
    for secret in (ALICE[1], "a-wrong-Secret-9", token, "Bearer", "Basic"):
        assert secret not in dumped


@pytest.mark.parametrize("body", ["5", "true", "0", "[]", '"alice"'])
def test_a_json_login_body_that_is_not_an_object_is_400(client, body):
    response = client.post("/login", data=body, content_type="application/json")
    error = assert_error(response, 400, details={"body"})
    assert error["details"] == {"body": ["Invalid input type."]}
