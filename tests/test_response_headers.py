"""Headers of an API's answers, and the limit on what a request may send."""

import io
import json

import pytest

from tests.conftest import ALICE, basic, bearer
from tests.helpers import assert_error

HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
TOO_BIG = "x" * (64 * 1024 + 1)


def assert_protected(response) -> None:
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, name


def test_a_login_is_not_cached(api, client):
    api.create_user(*ALICE)
    response = client.post("/login", headers=basic(*ALICE))
    assert response.status_code == 200
    assert_protected(response)


@pytest.mark.parametrize("path", ["/v1/me", "/v1/logs", "/v1/users", "/v1/logs/1", "/v1/nowhere"])
def test_authenticated_responses_are_not_cached(api, users, path):
    assert_protected(api.get(path, users["admin"]))


def test_logout_is_not_cached(client, users):
    assert_protected(client.get("/logout", headers=bearer(users["alice"])))


@pytest.mark.parametrize(
    "call",
    [
        lambda client: client.get("/v1/me"),
        lambda client: client.get("/v1/me", headers=bearer("not-a-token")),
        lambda client: client.post("/login", headers=basic("mallory", "wrong-password")),
        lambda client: client.delete("/v1/me"),
        lambda client: client.get("/"),
        lambda client: client.get("/healthz"),
        lambda client: client.get("/v1/openapi.json"),
    ],
    ids=["401", "bad-token", "login-401", "405", "index", "healthz", "openapi"],
)
def test_every_other_response_carries_the_headers_too(client, call):
    assert_protected(call(client))


def test_an_error_from_a_crash_carries_the_headers(app, client):
    @app.get("/crash-for-headers")
    def crash():
        raise RuntimeError("boom")

    response = client.get("/crash-for-headers")
    assert response.status_code == 500
    assert_protected(response)


@pytest.mark.parametrize(
    ("method", "path", "needs_token"),
    [
        ("POST", "/login", False),
        ("POST", "/v1/users", True),
        ("PUT", "/v1/me/password", True),
    ],
)
def test_a_body_over_64_kib_is_413_before_anything_is_checked(
    api, users, method, path, needs_token
):
    headers = bearer(users["admin"]) if needs_token else basic("alice", "not-her-password")
    response = api.client.open(
        path, method=method, headers=headers, json={"username": "carol", "password": TOO_BIG}
    )
    assert_error(response, 413)
    assert_protected(response)
    assert api.rows(event="login.failure") == []


def chunked(client, path: str, body: bytes, headers: dict):
    """`body` sent as a server hands a chunked request to the app: no Content-Length, a
    Transfer-Encoding of chunked, and an input stream the server ends (gunicorn, Werkzeug)."""
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("password", ["not-her-password", ALICE[1]])
def test_a_chunked_body_over_64_kib_is_413_before_the_password_is_checked(api, users, password):
    body = json.dumps({"username": "carol", "password": TOO_BIG}).encode()
    response = chunked(api.client, "/login", body, basic("alice", password))
    assert_error(response, 413)
    assert_protected(response)
    assert api.rows(event="login.failure") == []
    assert len(api.rows(event="login.success", user="alice")) == 1  # the fixture's own


def test_a_chunked_body_under_64_kib_is_read_whole(api, users):
    body = json.dumps({"username": ALICE[0], "password": ALICE[1]}).encode()
    response = chunked(api.client, "/login", body, {})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["user"]["username"] == ALICE[0]


def test_a_body_of_64_kib_is_accepted(api, users):
    body = {"current_password": ALICE[1], "new_password": "x" * 1024, "pad": ""}
    body["pad"] = "y" * (64 * 1024 - len(str(body).encode()) - 100)
    response = api.client.put("/v1/me/password", json=body, headers=bearer(users["alice"]))
    assert_error(response, 400, details={"pad"})  # read and parsed: the unknown field is named
